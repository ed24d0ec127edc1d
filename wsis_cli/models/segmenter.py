"""The semantic segmentation (SS) branch of CCGR: a fully convolutional network with a PSPNet
pyramid pooling head (Zhao et al. 2017) and a stride-4 skip.

A ResNet trunk (:class:`~wsis_cli.models.backbones.ResNetFeatures`, output stride 16, stored as
``backbone`` so that ``build_resnet(name, weights="SEG.pt")`` can start another model's trunk from
a segmenter checkpoint) feeds a pyramid pooling module: the stride-16 features are average-pooled
into 1x1, 2x2, 3x3 and 6x6 bins, each bin set is reduced by a 1x1 convolution, upsampled
bilinearly back and concatenated with the features; a 3x3 convolution fuses them. The fused map is
upsampled to stride 4 and joined with the trunk's stride-4 features (``stem_and_layer1``, reduced
to 48 channels), so objects of a few pixels at 160 px keep a footprint; a 3x3 convolution and a
1x1 classifier give ``K + 1`` logits (plane 0 = background, plane ``k + 1`` = the dataset's
``k``-th category), upsampled bilinearly to the input size.

The head normalises with GroupNorm, not BatchNorm: the 1x1 bin holds one value per channel, which
BatchNorm cannot normalise in a batch of one image (the paper's batch size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsis_cli.models.backbones import ResNetFeatures, build_resnet
from wsis_cli.models.classifier import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BINS", "SKIP_CHANNELS", "PyramidPooling", "Segmenter", "build_segmenter"]

BINS = (1, 2, 3, 6)  # PSPNet's pyramid levels
SKIP_CHANNELS = 48   # the stride-4 skip's width after its 1x1 reduction (as DeepLabv3+)


def _conv_gn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.GroupNorm(_groups(cout), cout), nn.ReLU(inplace=True))


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module.

    ``forward(f)`` with ``f (FloatTensor[B, C, h, w])`` returns ``FloatTensor[B, C + len(bins) *
    reduced, h, w]``: ``f`` and, per bin size ``b``, ``f`` average-pooled to ``b x b``, reduced to
    ``reduced`` channels by a 1x1 conv (+ GroupNorm, ReLU) and upsampled bilinearly to ``h x w``.
    """

    def __init__(self, channels: int, reduced: int, bins: tuple[int, ...] = BINS):
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(_conv_gn_relu(channels, reduced, 1) for _ in self.bins)
        self.out_channels = channels + len(self.bins) * reduced

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h, w = f.shape[-2:]
        levels = [f]
        for b, stage in zip(self.bins, self.stages):
            pooled = stage(F.adaptive_avg_pool2d(f, b))
            levels.append(F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat(levels, dim=1)


class Segmenter(nn.Module):
    """ResNet trunk + pyramid pooling + stride-4 skip + ``K + 1``-way pixel classifier.

    ``forward(x)`` takes ``x (FloatTensor[B, 3, H, W])``, RGB in 0..1 (normalised inside), and
    returns logits ``FloatTensor[B, K + 1, H, W]`` (plane 0: background). Any ``H, W`` works; the
    trunk sees them at strides 4 and 16.
    """

    def __init__(self, backbone: ResNetFeatures, num_classes: int, *, width: int | None = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        c = backbone.channels
        width = width or c // 4
        self.backbone = backbone
        self.num_classes = num_classes
        self.ppm = PyramidPooling(c, c // 4)
        self.bottleneck = _conv_gn_relu(self.ppm.out_channels, width, 3)
        skip_in = backbone.layer1[-1].conv1.in_channels  # layer1's output width (64: resnet18, 256: resnet50)
        self.skip = _conv_gn_relu(skip_in, SKIP_CHANNELS, 1)
        self.fuse = _conv_gn_relu(width + SKIP_CHANNELS, width, 3)
        self.classifier = nn.Conv2d(width, num_classes + 1, kernel_size=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        f4 = self.backbone.stem_and_layer1((x - self.mean) / self.std)
        f16 = self.bottleneck(self.ppm(self.backbone.rest(f4)))
        up = F.interpolate(f16, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(torch.cat([up, self.skip(f4)], dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_segmenter(backbone: str, *, num_classes: int, weights: str = "none") -> Segmenter:
    """A :class:`Segmenter` on ResNet ``backbone`` (``resnet18`` or ``resnet50``) whose trunk starts
    from ``weights`` (``imagenet``, ``none`` or a file, see :mod:`wsis_cli.models.backbones`), for
    ``num_classes`` categories (``num_classes + 1`` output planes)."""
    return Segmenter(build_resnet(backbone, weights=weights), num_classes)
