"""BoxInst's box-supervised mask terms (Tian et al., CVPR 2021), in Mask R-CNN's RoI frame: what
trains the mask head on an annotation that has a box and no mask (``train maskrcnn --box-loss
boxinst``).

Every term is computed per positive proposal on the mask head's ``S x S`` grid (``S = 28``), the
frame in which Mask R-CNN's ordinary mask loss compares masks:

- :func:`rasterise_boxes`: the ground-truth box drawn in the proposal's grid (a cell belongs to it
  when its centre lies inside the box).
- :func:`projection_loss`: the box is the tightest box around its object, so the predicted
  mask's projections on the x and y axes (the maximum over each column and each row) must equal
  the box's: a dice loss between the two projections, one term per axis.
- :func:`pairwise_loss`: neighbouring cells of similar colour should take the same label.
  Colour is CIE Lab (:func:`rgb_to_lab`) sampled in the same grid; a pair's similarity is
  ``exp(-||lab_i - lab_j|| / THETA)`` and pairs with similarity >= ``TAU`` (BoxInst's theta = 2,
  tau = 0.3) contribute ``-log P(same label)`` with ``P = p_i p_j + (1 - p_i)(1 - p_j)``, averaged
  over the pairs whose first cell lies inside the box. Neighbours are the 8 cells at
  ``DILATION`` = 1 grid step: BoxInst compares pixels 2 steps apart on a stride-4 map (8 image
  pixels); a 28-cell grid over a proposal already spaces cells box/28 pixels apart (about 4 px for
  a 100 px object), so one step is the comparable distance.
- :func:`pairwise_weight`: BoxInst ramps the pairwise term up linearly (it is meaningless until
  the projection term has shaped the masks): weight ``min(1, iteration / PAIRWISE_WARMUP)``.
  BoxInst ramps over 10k of a 90k-iteration schedule; wsis runs are usually far shorter, so the
  trainer ramps over a tenth of its segmentation iterations, at most ``PAIRWISE_WARMUP`` = 1000
  (``WsisRoIHeads.pairwise_warmup``).

- The RoI frame: in a frame that hugs the box, a mask filling the grid has zero projection and
  zero pairwise loss, so short runs learn nearly filled boxes (on the ladder, seed 0: predicted
  masks filled 104% of their boxes). Computing the terms on proposals widened 1.5x about their
  centres was tried and measured worse at 200 iterations (test mAP@0.5 0.182 / 0.177 against
  0.261 / 0.182 unwidened, seeds 0 / 1; benchmarks/RESULTS.md), so the terms use the proposals
  as they are.

All functions are pure tensor functions (no state, any device, differentiable where a loss is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BOX_LOSSES", "THETA", "TAU", "DILATION", "PAIRWISE_WARMUP", "rgb_to_lab", "rasterise_boxes",
           "projection_loss", "colour_similarity", "pairwise_loss", "pairwise_weight", "roi_lab"]

BOX_LOSSES = ("none", "boxinst")  # what trains the mask head on box-only annotations: nothing, or BoxInst's terms
THETA = 2.0             # colour similarity exp(-||dLab|| / THETA)
TAU = 0.3               # pairs at least this similar must take the same label
DILATION = 1            # neighbour distance in grid cells
PAIRWISE_WARMUP = 1000  # iterations over which the pairwise term's weight ramps from 0 to 1
_EPS = 1e-5

# sRGB (D65) -> CIE XYZ, and the D65 white point
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE = (0.950456, 1.0, 1.088754)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Lab of sRGB colours: ``rgb`` (FloatTensor[N, 3, ...]) in 0..1 (clamped) -> L in 0..100,
    a and b about -128..127 (FloatTensor[N, 3, ...]), as OpenCV's and scikit-image's conversions."""
    rgb = rgb.float().clamp(0.0, 1.0)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    m = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,nj...->ni...", m, linear)
    white = torch.tensor(_WHITE, dtype=rgb.dtype, device=rgb.device).view(1, 3, *([1] * (rgb.dim() - 2)))
    t = xyz / white
    delta = 6.0 / 29.0
    f = torch.where(t > delta**3, t.clamp_min(1e-12).pow(1.0 / 3.0), t / (3 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def rasterise_boxes(boxes: torch.Tensor, rois: torch.Tensor, side: int) -> torch.Tensor:
    """``boxes`` (FloatTensor[N, 4], x1, y1, x2, y2) drawn in the ``side x side`` grids of ``rois``
    (FloatTensor[N, 4], the same frame): FloatTensor[N, side, side] of 0/1, 1 where a cell's centre
    lies inside its box. Row ``r`` of a grid spans ``y1 + r * h / side`` .. ``y1 + (r + 1) * h / side``
    of its RoI, as RoIAlign samples it."""
    steps = (torch.arange(side, dtype=rois.dtype, device=rois.device) + 0.5) / side  # cell centres in 0..1

    def axis(lo: int, hi: int) -> torch.Tensor:
        centre = rois[:, lo, None] + steps[None] * (rois[:, hi] - rois[:, lo])[:, None]
        return ((centre >= boxes[:, lo, None]) & (centre <= boxes[:, hi, None])).to(rois.dtype)

    return axis(1, 3)[:, :, None] * axis(0, 2)[:, None, :]


def _dice(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row dice loss ``1 - (2 x.t + eps) / (x.x + t.t + eps)`` of FloatTensor[N, L]s: 0 when
    they are equal, 1 when disjoint."""
    inter = (x * target).sum(1)
    union = x.square().sum(1) + target.square().sum(1)
    return 1.0 - (2.0 * inter + _EPS) / (union + _EPS)


def projection_loss(mask_logits: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """BoxInst's projection term, averaged over instances: ``mask_logits`` (FloatTensor[N, S, S],
    each proposal's logits of its class), ``box_masks`` (FloatTensor[N, S, S], its box rasterised,
    :func:`rasterise_boxes`). The dice loss between the predicted probabilities' maximum along y
    and the box's (the x projection), plus the same along x. 0 for a mask whose projections are
    exactly the box's; a scalar 0 connected to the logits when ``N = 0``."""
    if len(mask_logits) == 0:
        return mask_logits.sum() * 0.0
    p = mask_logits.float().sigmoid()
    box = box_masks.float()
    loss_x = _dice(p.amax(dim=1), box.amax(dim=1))
    loss_y = _dice(p.amax(dim=2), box.amax(dim=2))
    return (loss_x + loss_y).mean()


def _offsets(dilation: int) -> list[tuple[int, int]]:
    d = dilation
    return [(dy, dx) for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0)]


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., i, j] = x[..., i + dy, j + dx]`` where that lies in the grid, 0 elsewhere."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def _inside(shape: tuple[int, int], dy: int, dx: int, device) -> torch.Tensor:
    """BoolTensor[H, W]: the cells whose neighbour at ``(dy, dx)`` lies in the grid."""
    return _shift(torch.ones(shape, device=device), dy, dx) > 0


def colour_similarity(lab: torch.Tensor, dilation: int = DILATION, theta: float = THETA) -> torch.Tensor:
    """``exp(-||lab_i - lab_j|| / theta)`` of every cell ``i`` and its 8 neighbours ``j`` at
    ``dilation``: ``lab`` (FloatTensor[N, 3, S, S]) -> FloatTensor[N, 8, S, S], 0 where the neighbour
    lies outside the grid."""
    sims = []
    for dy, dx in _offsets(dilation):
        diff = lab - _shift(lab, dy, dx)
        inside = _inside(lab.shape[-2:], dy, dx, lab.device)
        sims.append(torch.exp(-diff.norm(dim=1) / theta) * inside)
    return torch.stack(sims, dim=1)


def pairwise_loss(mask_logits: torch.Tensor, lab: torch.Tensor, box_masks: torch.Tensor, *,
                  dilation: int = DILATION, theta: float = THETA, tau: float = TAU) -> torch.Tensor:
    """BoxInst's pairwise term: ``mask_logits`` (FloatTensor[N, S, S]), the colours of the same
    grids ``lab`` (FloatTensor[N, 3, S, S], :func:`rgb_to_lab`), ``box_masks`` (FloatTensor[N, S, S]).
    The mean over every pair (a cell inside its box, one of its 8 neighbours at ``dilation``, colour
    similarity >= ``tau``) of ``-log P(both take the same label)``, computed from log-sigmoids for
    stability; a scalar 0 connected to the logits when there is no such pair."""
    if len(mask_logits) == 0:
        return mask_logits.sum() * 0.0
    x = mask_logits.float()
    log_fg, log_bg = F.logsigmoid(x), F.logsigmoid(-x)
    similar = colour_similarity(lab.float(), dilation, theta) >= tau
    total, count = x.new_zeros(()), x.new_zeros(())
    for k, (dy, dx) in enumerate(_offsets(dilation)):
        same = torch.logaddexp(log_fg + _shift(log_fg, dy, dx), log_bg + _shift(log_bg, dy, dx))
        weight = similar[:, k].float() * box_masks.float()
        total = total - (same * weight).sum()
        count = count + weight.sum()
    return total / count.clamp_min(1.0)


def pairwise_weight(iteration: int, warmup: int = PAIRWISE_WARMUP) -> float:
    """The pairwise term's weight at training ``iteration`` (1 = the first): a linear ramp to 1."""
    return min(1.0, max(0, iteration) / warmup) if warmup > 0 else 1.0


def roi_lab(images: torch.Tensor, rois: list[torch.Tensor], side: int) -> torch.Tensor:
    """The Lab colours of each RoI's ``side x side`` grid: ``images`` (FloatTensor[B, 3, H, W], RGB
    in 0..1, the batch the RoIs live in), ``rois`` (one FloatTensor[N_i, 4] per image, x1, y1, x2, y2)
    -> FloatTensor[N, 3, side, side]. RGB is sampled by RoIAlign (2x2 samples a cell, as the mask
    targets are) and converted after, so only the grids are converted."""
    from torchvision.ops import roi_align

    if sum(len(r) for r in rois) == 0:
        return images.new_zeros((0, 3, side, side))
    rgb = roi_align(images.float(), [r.float() for r in rois], (side, side), 1.0, 2)
    return rgb_to_lab(rgb)
