"""The MIL branch of the CCGR paper: a WSDDN head (Bilen & Vedaldi 2016; the paper's Eqs. 2-3) on
a ResNet trunk.

A bag is one peak's proposals; its label is the peak's class. For the ``R`` proposals of all
bags of a batch (the bags of one image share one pass of the trunk):

1. the trunk's stride-16 features, reduced by a 1x1 convolution to ``reduce`` channels, are
   pooled per proposal by RoIAlign (``roi_size x roi_size``), then two fully connected layers
   (``hidden`` wide, ReLU) give each proposal's feature;
2. two linear streams give ``x_cls`` and ``x_det`` (``R x C``; the paper writes them ``C x R``);
   ``sigma_cls`` is a softmax over the classes of each proposal, ``sigma_det`` a softmax over the
   proposals of each bag, per class;
3. the proposal scores are ``x = sigma_cls * sigma_det`` and the bag's class scores
   ``phi_B = sum over the bag's proposals of x`` (in 0..1, since ``sigma_det`` sums to 1 over the
   bag and ``sigma_cls`` is at most 1);
4. the loss is the binary cross-entropy of ``phi_B`` against the bag's one-hot label over the
   dataset's classes (the paper's Eq. 3), summed over classes and averaged over bags.

Inference picks, per bag, the proposal with the highest ``x[r, c]`` for the bag's class ``c``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsis_cli.models.backbones import ResNetFeatures, build_resnet
from wsis_cli.models.classifier import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["WSDDN", "build_mil", "bag_softmax", "bag_scores", "mil_loss"]

EPS = 1e-6  # phi is clamped to [EPS, 1 - EPS] in the loss


def bag_softmax(logits: torch.Tensor, bag: torch.Tensor, num_bags: int) -> torch.Tensor:
    """Softmax over the proposals of each bag, per column.

    Args:
        logits (FloatTensor[R, C]): one row per proposal.
        bag (LongTensor[R]): the bag of each proposal, in 0..num_bags-1.
    Returns:
        FloatTensor[R, C]: for each bag and column, its rows sum to 1.
    """
    c = logits.shape[1]
    index = bag[:, None].expand(-1, c)
    top = torch.full((num_bags, c), float("-inf"), dtype=logits.dtype, device=logits.device)
    top = top.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
    e = torch.exp(logits - top[bag].detach())
    total = torch.zeros((num_bags, c), dtype=e.dtype, device=e.device).index_add(0, bag, e)
    return e / total[bag]


def bag_scores(x: torch.Tensor, bag: torch.Tensor, num_bags: int) -> torch.Tensor:
    """``phi`` (FloatTensor[num_bags, C]): the proposal scores ``x`` (FloatTensor[R, C]) summed over
    each bag."""
    return torch.zeros((num_bags, x.shape[1]), dtype=x.dtype, device=x.device).index_add(0, bag, x)


def mil_loss(phi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of bag scores ``phi`` (FloatTensor[B, C], 0..1) against ``labels``
    (FloatTensor[B, C], one-hot), summed over classes, averaged over bags."""
    phi = phi.float().clamp(EPS, 1.0 - EPS)
    return F.binary_cross_entropy(phi, labels.float(), reduction="sum") / max(phi.shape[0], 1)


class WSDDN(nn.Module):
    """Trunk + WSDDN head (see the module docstring).

    ``forward(images, rois, bag, num_bags)``:
        images (FloatTensor[N, 3, H, W]): RGB in 0..1 (normalised inside).
        rois (FloatTensor[R, 5]): ``image index, x1, y1, x2, y2`` in input pixels.
        bag (LongTensor[R]): each proposal's bag, 0..num_bags-1 (a bag's proposals share an image).
    returns ``(x (FloatTensor[R, C]) proposal scores, phi (FloatTensor[num_bags, C]) bag scores)``.
    """

    def __init__(self, backbone: ResNetFeatures, num_classes: int, *, reduce: int = 256, hidden: int = 1024,
                 roi_size: int = 7, frozen_bn: bool = False):
        super().__init__()
        self.frozen_bn = frozen_bn
        self.backbone = backbone
        self.reduce = nn.Sequential(nn.Conv2d(backbone.channels, reduce, kernel_size=1), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(reduce * roi_size * roi_size, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.cls = nn.Linear(hidden, num_classes)
        self.det = nn.Linear(hidden, num_classes)
        for layer in (self.cls, self.det):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        self.roi_size = roi_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def train(self, mode: bool = True) -> "WSDDN":
        """As ``nn.Module.train``; with ``frozen_bn`` the trunk's batch norms stay in eval mode (a
        pretrained trunk keeps its statistics: a step sees one or two images, too few for batch
        statistics)."""
        super().train(mode)
        for m in self.backbone.modules() if self.frozen_bn else ():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def proposal_logits(self, images: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_cls, x_det)``, each FloatTensor[R, C]: the two streams before their softmaxes."""
        from torchvision.ops import roi_align

        f = self.reduce(self.backbone((images - self.mean) / self.std))
        pooled = roi_align(f, rois.to(f.dtype), output_size=self.roi_size, spatial_scale=1.0 / self.stride,
                           sampling_ratio=2, aligned=True)
        h = self.fc(pooled)
        return self.cls(h), self.det(h)

    def forward(self, images: torch.Tensor, rois: torch.Tensor, bag: torch.Tensor,
                num_bags: int) -> tuple[torch.Tensor, torch.Tensor]:
        x_cls, x_det = self.proposal_logits(images, rois)
        x = F.softmax(x_cls.float(), dim=1) * bag_softmax(x_det.float(), bag, num_bags)
        return x, bag_scores(x, bag, num_bags)


def build_mil(*, backbone: str, num_classes: int, weights: str = "none", reduce: int = 256, hidden: int = 1024,
              roi_size: int = 7, frozen_bn: bool | None = None) -> WSDDN:
    """A :class:`WSDDN` on ``build_resnet(backbone, weights=weights)`` (``none``, ``imagenet`` or a
    state dict path, e.g. a segmenter checkpoint: its ``backbone.`` prefix is stripped).
    ``frozen_bn`` (default: whether ``weights`` is pretrained) keeps the trunk's batch-norm
    statistics fixed in training."""
    frozen = weights != "none" if frozen_bn is None else frozen_bn
    return WSDDN(build_resnet(backbone, weights=weights), num_classes, reduce=reduce, hidden=hidden,
                 roi_size=roi_size, frozen_bn=frozen)
