"""Peak-stimulated fully convolutional classifier (PRM, Zhou et al. 2018).

A ResNet backbone (output stride 16) and a 1x1 convolution give one *class response map* per
class. Training pools each map only at its peaks — local maxima in a ``kernel x kernel`` window
that lie above the map's median — so the loss gradient flows through the peaks alone, which
teaches the network to answer with one peak per instance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsis_cli.models.backbones import build_resnet

__all__ = ["PeakClassifier", "build_classifier", "peak_mask", "peak_stimulation", "image_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def peak_mask(crm: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Peaks of class response maps.

    Args:
        crm (FloatTensor[B, K, h, w]): class response maps.
    Returns:
        BoolTensor[B, K, h, w]: True where a value is the maximum of its ``kernel x kernel``
        window and strictly above its map's median. Every non-constant map has at least one.
    """
    pooled = F.max_pool2d(crm, kernel, stride=1, padding=kernel // 2)
    median = crm.flatten(2).median(dim=2).values[:, :, None, None]
    return (crm >= pooled) & (crm > median)


def peak_stimulation(crm: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Class scores (FloatTensor[B, K]): the mean of each map over its peaks (the map's mean
    where it has none, i.e. a constant map). Gradients reach the peaks only."""
    peaks = peak_mask(crm.detach(), kernel).to(crm.dtype)
    n = peaks.sum(dim=(2, 3))
    mean = crm.mean(dim=(2, 3))
    return torch.where(n > 0, (crm * peaks).sum(dim=(2, 3)) / n.clamp(min=1), mean)


class PeakClassifier(nn.Module):
    """Backbone + 1x1 conv class-response head.

    ``forward(x)`` takes ``x (FloatTensor[B, 3, H, W])`` RGB in 0..1 (normalised inside) and
    returns the class response maps ``(FloatTensor[B, K, H/16, W/16])``; scores come from
    :func:`peak_stimulation`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, peak_kernel: int = 3):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.channels, num_classes, kernel_size=1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.peak_kernel = peak_kernel
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def features_stride4(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-4 features peak response maps are read from (FloatTensor[B, C4, H/4, W/4])."""
        return self.backbone.stem_and_layer1(self.normalise(x))

    def crm_from_stride4(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.rest(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.crm_from_stride4(self.features_stride4(x))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (FloatTensor[B, K]) by peak stimulation."""
        return peak_stimulation(self(x), self.peak_kernel)


def build_classifier(*, backbone: str, num_classes: int, weights: str = "none", peak_kernel: int = 3) -> PeakClassifier:
    return PeakClassifier(build_resnet(backbone, weights=weights), num_classes, peak_kernel=peak_kernel)


def image_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """``HxWx3`` uint8 RGB -> ``FloatTensor[3, size, size]`` in 0..1, resized to a square (area
    interpolation when shrinking, bilinear when enlarging). Training and PRM inference both
    feed the classifier through this function."""
    import cv2

    h, w = rgb.shape[:2]
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if size <= h and size <= w else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (size, size), interpolation=interp)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
