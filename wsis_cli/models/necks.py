"""Detector necks: what turns a backbone's feature maps into the pyramid the RPN and RoI heads read.

``fpn`` is torchvision's Feature Pyramid Network (lateral 1x1 convs, a top-down path with nearest
upsampling, a 3x3 conv per level, and ``"pool"``: a stride-2 max pool of the top level).

``efpn`` is :class:`EnhancedFPN`, the hybrid-networks paper's Enhanced-FPN (its Sec. 2.3). The
paper gives two reasons: FPN's top-down path enriches the low levels with high-level semantics
but nothing enriches the top levels ("treats different feature maps unfairly"), and the way from
the low-level maps (fine localisation) to the top is long (it cites PANet). Its Figs. 3 and 4
are only described in text ("multiple structures that the lateral feature map connects with the
bottom feature map"; Fig. 4 names "conv m x m / s n" and "Relu"). Our reading:

- **Top-down path** (``P``): torchvision's FPN, unchanged, under the same module names
  (``inner_blocks``, ``layer_blocks``), so ``--weights coco`` loads it.
- **Bottom-up path** (``N``, as PANet's augmentation): ``N_0 = P_0``; for each higher level
  ``N_k = ReLU(conv3x3(P_k + ReLU(conv3x3/s2(N_{k-1})) + S_k))``, so each level is fused with a
  stride-2 conv of the level below; the top levels now get the low-level detail too ("balanced").
- **Shortened path** (``S``): the lowest lateral map ``L_0`` (the 1x1 conv of the finest backbone
  map, before any top-down mixing) reaches every higher level in one step,
  ``S_k = ReLU(conv3x3(maxpool_{2^k}(L_0)))`` (max pool by the stride ratio, kernel = stride), instead
  of through ``k`` bottom-up steps.
- ``"pool"`` is the stride-2 max pool of the enhanced top level ``N_top`` (as FPN's of ``P_top``).

What is a guess: the exact Fig. 3 wiring, that the short path starts at the lateral map (not at
``P_0`` or the raw backbone map) and uses max pooling (PANet's choice for fusing levels) followed by
one 3x3 conv, that it is added into every level's fusion sum, and where the ReLUs sit (after every
new conv, as in PANet). The output names, levels, sizes and width are FPN's, so the RPN and RoI
heads are unchanged. The new convs are initialised as torchvision's FPN initialises its own
(Kaiming uniform, a = 1, zero bias); no published weights exist for them.

Every level's stride is given (``strides``): ResNets give 4, 8, 16, 32; MobileNet-V3's FPN reads two
maps that are both at stride 32, so its bottom-up conv has stride 1 and its short path no pooling.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from wsis_cli.errors import WsisError

__all__ = ["NECKS", "check_neck", "build_neck", "EnhancedFPN"]

NECKS = ("fpn", "efpn")


def check_neck(name: str) -> str:
    """``name`` when it is a neck of :data:`NECKS`; WsisError otherwise."""
    if name not in NECKS:
        raise WsisError(f"--neck must be one of {', '.join(NECKS)}, got {name!r}")
    return name


def build_neck(name: str, *, in_channels: Sequence[int], channels: int, strides: Sequence[int]) -> nn.Module:
    """The neck ``name`` over backbone maps of ``in_channels`` (finest first) at ``strides``,
    ``channels`` wide, with the ``"pool"`` level on top."""
    check_neck(name)
    if name == "fpn":
        return FeaturePyramidNetwork(list(in_channels), channels, extra_blocks=LastLevelMaxPool())
    return EnhancedFPN(in_channels, channels, strides=strides)


def _conv3x3(channels: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # as torchvision's FPN initialises its convs
    nn.init.constant_(conv.bias, 0)
    return conv


def _fit(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` at ``like``'s height and width (nearest), when a size rounded differently."""
    return x if x.shape[-2:] == like.shape[-2:] else F.interpolate(x, size=like.shape[-2:], mode="nearest")


class EnhancedFPN(FeaturePyramidNetwork):
    """FPN plus a bottom-up path and a short path from the lowest lateral map (see the module
    docstring for the wiring and what is a guess).

    Args:
        in_channels: channels of the backbone maps, finest first (at least two).
        channels: width of every output level.
        strides: stride of each backbone map (e.g. 4, 8, 16, 32); each is the one below it or twice it.

    Input: ``OrderedDict`` name -> FloatTensor[B, in_channels[k], H_k, W_k], finest first. Output:
    ``OrderedDict`` of the same names plus ``"pool"``, each FloatTensor[B, channels, H_k, W_k]
    (``"pool"`` at half the top level's size), as :class:`FeaturePyramidNetwork`'s.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, *, strides: Sequence[int]) -> None:
        super().__init__(list(in_channels), channels, extra_blocks=LastLevelMaxPool())
        n = len(in_channels)
        strides = [int(s) for s in strides]
        if n < 2 or len(strides) != n:
            raise WsisError(f"--neck efpn needs at least 2 backbone levels with a stride each, got {n} levels and "
                            f"strides {strides}")
        steps = [b // a for a, b in zip(strides, strides[1:])]
        if min(strides) < 1 or any(b not in (a, 2 * a) for a, b in zip(strides, strides[1:])):
            raise WsisError(f"--neck efpn: each backbone level's stride must be the one below it or twice it, got "
                            f"{strides}")
        self.strides = tuple(strides)
        self.pools = tuple(s // strides[0] for s in strides[1:])  # short path: L_0 pooled to level k
        self.down = nn.ModuleList(_conv3x3(channels, step) for step in steps)  # N_{k-1} -> level k
        self.short = nn.ModuleList(_conv3x3(channels) for _ in steps)         # pooled L_0 -> level k
        self.fuse = nn.ModuleList(_conv3x3(channels) for _ in steps)          # the sum at level k -> N_k

    def _top_down(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """FPN's path: the lowest lateral map ``L_0`` and the outputs ``P_0 .. P_top``."""
        last = self.get_result_from_inner_blocks(feats[-1], -1)
        outs = [self.get_result_from_layer_blocks(last, -1)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.get_result_from_inner_blocks(feats[idx], idx)
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.get_result_from_layer_blocks(last, idx))
        return lateral, outs

    def _bottom_up(self, low: torch.Tensor, tops: list[torch.Tensor]) -> list[torch.Tensor]:
        """``N_0 .. N_top`` from the top-down outputs ``tops`` and the lowest lateral map ``low``."""
        outs = [tops[0]]
        for k, (down, short, fuse, pool) in enumerate(zip(self.down, self.short, self.fuse, self.pools), start=1):
            pooled = F.max_pool2d(low, kernel_size=pool, stride=pool, ceil_mode=True) if pool > 1 else low
            s = F.relu(short(_fit(pooled, tops[k])))
            d = F.relu(_fit(down(outs[-1]), tops[k]))
            outs.append(F.relu(fuse(tops[k] + d + s)))
        return outs

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = list(x.keys())
        feats = list(x.values())
        low, tops = self._top_down(feats)
        results, names = self.extra_blocks(self._bottom_up(low, tops), feats, names)
        return OrderedDict(zip(names, results))
