"""Ignore regions in the region proposal network: torchvision's RPN, except that anchors lying
mostly inside an ignore box (``target["ignore"]``: FloatTensor[M, 4], x1, y1, x2, y2, the boxes of
instances the training set leaves out, e.g. ``--only-valid``'s invalid GrabCut masks) are neither
object nor background, so an unlabelled object is not taught as background.

The rule, shared with the RoI heads (:mod:`wsis_cli.models.roi_heads`): a box (anchor or
proposal) that the matcher made background is ignored when at least ``IGNORE_INSIDE`` of its own
area lies inside one ignore box. Its own area, not IoU: a part of an unlabelled object (a small
anchor inside it) is no more background than the whole, while a big box that merely contains the
object is mostly background and stays so. Anchors and proposals matched to a kept instance keep
their label whatever ignore box they touch.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.rpn import RegionProposalNetwork

__all__ = ["IGNORE_INSIDE", "inside_fraction", "ignored", "WsisRPN"]

IGNORE_INSIDE = 0.5  # a background box this much inside an ignore box is ignored


def inside_fraction(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """For each of ``boxes`` (FloatTensor[N, 4], x1, y1, x2, y2) the largest share of its area that
    lies inside one of ``regions`` (FloatTensor[M, 4]): FloatTensor[N] in 0..1 (0 when ``M = 0``;
    a box of no area counts as inside when its corner is)."""
    if len(regions) == 0 or len(boxes) == 0:
        return boxes.new_zeros(len(boxes))
    lt = torch.maximum(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    wh = (rb - lt).clamp_min(0.0)
    inter = wh[..., 0] * wh[..., 1]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    corner_in = ((boxes[:, None, :2] >= regions[None, :, :2]) & (boxes[:, None, :2] <= regions[None, :, 2:])).all(-1)
    share = torch.where(area > 0, inter / area.clamp_min(1e-12), corner_in.to(boxes.dtype))
    return share.amax(dim=1).clamp(0.0, 1.0)


def ignored(boxes: torch.Tensor, target: dict) -> torch.Tensor:
    """BoolTensor[N]: which of ``boxes`` lie at least ``IGNORE_INSIDE`` inside one of
    ``target["ignore"]`` (all False without ignore boxes)."""
    regions = target.get("ignore")
    if regions is None or len(regions) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    return inside_fraction(boxes, regions.to(boxes.dtype)) >= IGNORE_INSIDE


class WsisRPN(RegionProposalNetwork):
    """torchvision's RPN whose background anchors inside ignore boxes (see the module docstring)
    take label -1 (not sampled: no objectness loss); built with RegionProposalNetwork's arguments."""

    def assign_targets_to_anchors(self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
                                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """torchvision's labels (1 object, 0 background, -1 between the thresholds) per anchor and
        the matched boxes; background anchors inside an ignore box become -1."""
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        for lab, anc, t in zip(labels, anchors, targets):
            lab[(lab == 0) & ignored(anc, t)] = -1.0
        return labels, matched
