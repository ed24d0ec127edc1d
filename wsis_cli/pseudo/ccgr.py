"""Center-context-gap refinement (CCGR): move boxes onto the objects of a class score map.

Every box has a class plane ``S`` (values in 0..1). With the box ``B`` and its context box ``B~``
(``B`` scaled by ``context`` about its centre, clipped to the image), the ring is
``C = B~ - B``. Box sums come from bilinear look-ups in the plane's integral image, which is
exact for a piecewise-constant map and differentiable in the four coordinates, so all boxes of
a chunk are optimised together by Adam as one ``(N, 4)`` tensor.

Objectives (losses, minimised):

``gap``   the paper's ``mean_C(S) - mean_B(S)`` (uses ``context``).
``mass``  (default) ``-(sum_B S - t * area_B) / area_start``: the class mass the box holds less
          ``t`` (``threshold``) per pixel. A side moves out while the mean score along it is
          above ``t``, so the box grows to the object's extent, thin parts included. ``gap`` is
          flat while the ring is still inside the object (the box drifts with the noise) and,
          once the ring reaches the border, prefers the dense core: thin parts lower the inside
          mean (benchmarks/RESULTS.md has the numbers).

Constraints, applied after every step (a projection, not a penalty):

- a box keeps its own point (``"point": [x, y]``, the peak that produced it) inside;
- a box may not come to hold a *stop point* of another instance of its class in its image; the
  side that crossed it is set back just short of it. ``stop="point"`` is the paper's rule (the
  stop point is the other instance's point); ``stop="split"`` (default) puts it between the two
  points, in proportion to the sizes of the two starting boxes (``p + (q - p) r_p / (r_p + r_q)``,
  ``r`` = half the box diagonal), where two touching instances meet, instead of at the far
  instance's centre;
- boxes stay inside the image and at least 1 px wide and high.

Without points only the objective and the image bounds limit growth: a box can grow over a
touching instance of its class where the map shows no dip between them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["OBJECTIVES", "CCGRConfig", "Integrals", "integral_images", "box_sums", "refine_boxes",
           "stop_points", "STOPS"]

OBJECTIVES = ("mass", "gap")
STOPS = ("split", "point")
EPS = 1e-6


@dataclass(frozen=True)
class CCGRConfig:
    steps: int = 200
    context: float = 1.5
    lr: float = 0.02  # Adam step, as a fraction of the box's starting side
    objective: str = "mass"
    threshold: float = 0.1  # t of the mass objective
    stop: str = "split"
    mask_thr: float = 0.5
    mask_rule: str = "union"  # see wsis_cli.pseudo.ccgr_masks
    contradict: float = 0.1  # an incoming mask's pixel the map scores below this is dropped (union)
    keep_region: float = 0.5  # a refined box must hold this share of its incoming mask, or the input box stays
    max_grow: float = 100.0  # ... and an area within this factor of the input box's, either way (10x a side)
    centres: bool = True  # a box without a point takes its input box's centre as one
    empty: str = "drop"  # an empty mask: drop the instance, or fall back to its incoming mask ("incoming")
    dedup: float = 0.5  # same-class masks overlapping by IoU above this are one object (1: keep all)
    min_component: int = 4  # px: the smallest map component that --labels may add as a missed instance
    chunk: int = 8192  # boxes optimised together, at most
    chunk_pixels: int = 96_000_000  # plane pixels of a chunk, at most (its integral images: 8 bytes each)

    def __post_init__(self) -> None:
        from wsis_cli.errors import WsisError
        from wsis_cli.pseudo.ccgr_masks import MASK_RULES

        if self.objective not in OBJECTIVES:
            raise WsisError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.stop not in STOPS:
            raise WsisError(f"--stop must be one of {', '.join(STOPS)}, got {self.stop!r}")
        if not 0.0 <= self.threshold < 1.0:
            raise WsisError(f"--threshold must be in [0, 1), got {self.threshold}")
        if self.context <= 1.0:
            raise WsisError(f"--context must be > 1 (the ring is the box scaled by it minus the box), got {self.context}")
        if self.mask_rule not in MASK_RULES:
            raise WsisError(f"--mask-rule must be one of {', '.join(MASK_RULES)}, got {self.mask_rule!r}")
        if self.empty not in ("drop", "incoming"):
            raise WsisError(f"--empty must be drop or incoming, got {self.empty!r}")
        if not (0.0 <= self.keep_region <= 1.0 and self.max_grow >= 1.0 and 0.0 <= self.contradict <= 1.0
                and 0.0 <= self.dedup <= 1.0 and self.min_component >= 1):
            raise WsisError("--keep-region, --contradict and --dedup must be in [0, 1], --max-grow >= 1 and "
                            "--min-component >= 1")
        if self.steps < 0 or self.lr <= 0:
            raise WsisError("--steps must be >= 0 and --lr > 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Integrals:
    """Integral images of planes of any sizes, one after another in one flat DoubleTensor, unpadded:
    plane ``p``'s ``(H_p + 1) x (W_p + 1)`` image starts at ``offset[p]`` (LongTensor[P]);
    ``sizes`` (DoubleTensor[P, 2]) holds each plane's width and height."""

    flat: torch.Tensor
    offset: torch.Tensor
    sizes: torch.Tensor


def integral_images(planes: list[np.ndarray]) -> Integrals:
    """The planes' integral images: ``I_p[y, x]`` = sum of plane ``p`` (``float (H_p, W_p)``) over rows
    ``< y`` and columns ``< x``, in float64 (summed down the columns first, then along the rows)."""
    shapes = [tuple(p.shape) for p in planes]
    lengths = np.array([(h + 1) * (w + 1) for h, w in shapes], dtype=np.int64)
    offset = np.cumsum(lengths) - lengths
    flat = torch.empty(int(lengths.sum()), dtype=torch.float64)
    for p, o, (h, w) in zip(planes, offset.tolist(), shapes):
        view = flat[o:o + (h + 1) * (w + 1)].view(h + 1, w + 1)
        p = np.asarray(p)
        p = np.ascontiguousarray(p, dtype=p.dtype if p.dtype in (np.float32, np.float64) else np.float64)
        torch.cumsum(torch.from_numpy(p), dim=0, dtype=torch.float64, out=view[1:, 1:])  # down the columns first
        view[1:, 1:].cumsum_(dim=1)
        view[0] = 0
        view[1:, 0] = 0
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64).reshape(-1, 2)
    return Integrals(flat, torch.from_numpy(offset), sizes)


def _lookup(flat: torch.Tensor, off: torch.Tensor, stride: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Bilinear value of each box's integral image (``flat[off:]``, rows ``stride`` long) at
    continuous ``(x, y)`` (already clipped to the plane, whose width and height are ``w``, ``h``).
    At the far border (``x == w``) the value is read from the last cell with weight 1, so the
    derivative there is the plane's last column (row)."""
    x0 = torch.minimum(x.detach().floor(), w - 1).clamp(min=0)
    y0 = torch.minimum(y.detach().floor(), h - 1).clamp(min=0)
    fx, fy = x - x0, y - y0
    base = off + y0.long() * stride + x0.long()
    v00, v01 = flat[base], flat[base + 1]
    v10, v11 = flat[base + stride], flat[base + stride + 1]
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def box_sums(integral: Integrals, plane: torch.Tensor, boxes: torch.Tensor,
             sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and area of each box's plane inside the box, the box clipped to its plane.

    Args:
        integral: from :func:`integral_images`.
        plane (LongTensor[N]): each box's plane.
        boxes (Tensor[N, 4]): x1, y1, x2, y2 in pixels (continuous).
        sizes (Tensor[N, 2]): each box's plane width, height.
    Returns:
        (Tensor[N], Tensor[N]): sums and clipped areas.
    """
    stride = (sizes[:, 0] + 1).long()
    return _box_sums(integral.flat, integral.offset[plane], stride, boxes, sizes[:, 0], sizes[:, 1])


def _box_sums(flat, off, stride, boxes, w, h) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`box_sums` with each box's integral image at ``flat[off:]`` in rows ``stride`` long."""
    zero = torch.zeros_like(w)
    x1 = _clip(boxes[:, 0], zero, w)
    y1 = _clip(boxes[:, 1], zero, h)
    x2 = torch.maximum(_clip(boxes[:, 2], zero, w), x1)
    y2 = torch.maximum(_clip(boxes[:, 3], zero, h), y1)
    s = (_lookup(flat, off, stride, x2, y2, w, h) - _lookup(flat, off, stride, x1, y2, w, h)
         - _lookup(flat, off, stride, x2, y1, w, h) + _lookup(flat, off, stride, x1, y1, w, h))
    return s, (x2 - x1) * (y2 - y1)


def _clip(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``v`` clipped to ``[lo, hi]``, with the gradient passed on at the bounds themselves.

    ``clamp`` gives a zero gradient at ``v == lo`` (and ``minimum`` half of it at ``v == hi``); a
    side that the projection has put on the image border would then never move off it again."""
    return torch.where(v < lo, lo, torch.where(v > hi, hi, v))

def _context(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return torch.cat([c - half, c + half], dim=1)


def _loss(cfg: CCGRConfig, s_in, a_in, s_out, a_out, a_start) -> torch.Tensor:
    if cfg.objective == "mass":
        return -(s_in - cfg.threshold * a_in) / a_start
    mean_in = s_in / a_in.clamp(min=EPS)
    mean_ring = (s_out - s_in) / (a_out - a_in).clamp(min=EPS)
    return mean_ring - mean_in


def stop_points(points: np.ndarray, boxes: np.ndarray, groups, stop: str) -> list[np.ndarray]:
    """Per box, the points it may not take in (see the module docstring).

    Args:
        points: ``float (N, 2)`` each box's own point (NaN rows: none).
        boxes: ``float (N, 4)`` the starting boxes.
        groups: ``(N,)`` hashable keys; boxes with equal keys (same image and class) block each other.
        stop: ``"point"`` or ``"split"``.
    Returns:
        ``float (Q_i, 2)`` per box.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    radius = np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    members: dict = {}
    for i, g in enumerate(groups):
        if not np.isnan(points[i]).any():
            members.setdefault(g, []).append(i)
    out = []
    for i, g in enumerate(groups):
        others = [j for j in members.get(g, []) if j != i]
        q = points[others].reshape(-1, 2)
        if stop == "split" and len(others) and not np.isnan(points[i]).any():
            w = radius[i] / np.maximum(radius[i] + radius[others], EPS)
            q = points[i] + (q - points[i]) * w[:, None]
        out.append(q)
    return out


def _project(boxes: torch.Tensor, old: torch.Tensor, sizes: torch.Tensor, own: torch.Tensor,
             has_own: torch.Tensor, others: torch.Tensor, others_mask: torch.Tensor) -> None:
    """Apply the constraints in place (see the module docstring); ``sizes``: each box's plane width, height."""
    if others.shape[1]:
        _stop(boxes, old, others, others_mask)
    # own point stays inside
    has = has_own[:, None]
    boxes[:, :2] = torch.where(has, torch.minimum(boxes[:, :2], own), boxes[:, :2])
    boxes[:, 2:] = torch.where(has, torch.maximum(boxes[:, 2:], own), boxes[:, 2:])
    # image bounds, 1 px at least
    boxes[:, :2] = torch.minimum(boxes[:, :2].clamp(min=0), sizes - 1)
    boxes[:, 2:] = torch.maximum(torch.minimum(boxes[:, 2:], sizes), boxes[:, :2] + 1)


def _stop(boxes: torch.Tensor, old: torch.Tensor, others: torch.Tensor, others_mask: torch.Tensor) -> None:
    """Where a box took in a stop point (``others``: ``(N, Q, 2)``), set back the side that crossed it,
    point by point in their order, each box's first point first: a set-back only shrinks a box, so
    after it only a later point that the box still holds needs one (in rounds, all boxes at once)."""
    px, py = others[..., 0], others[..., 1]
    fresh = others_mask & ~_inside(old, px, py)  # points each box did not hold before the step
    hit = fresh & _inside(boxes, px, py)
    any_hit = hit.any(dim=1)
    if not bool(any_hit.any()):
        return
    rows = any_hit.nonzero().flatten()
    hit = hit[rows]
    cols = torch.arange(others.shape[1])
    while len(rows):
        q = hit.to(torch.uint8).argmax(dim=1)  # the first point each box took in
        b = _set_back(boxes[rows], old[rows], px[rows, q], py[rows, q])
        boxes[rows] = b
        hit = fresh[rows] & (cols > q[:, None]) & _inside(b, px[rows], py[rows])
        more = hit.any(dim=1)
        rows, hit = rows[more], hit[more]


def _inside(boxes: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """``bool (N, Q)``: point ``q`` of box ``n`` (``px``, ``py``: ``(N, Q)``) lies in the box."""
    b = boxes[:, :, None]
    return (b[:, 0] <= px) & (px <= b[:, 2]) & (b[:, 1] <= py) & (py <= b[:, 3])


def _set_back(boxes: torch.Tensor, old: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """``boxes`` that took in their point ``(px, py)`` with the side that crossed it (the least
    overshooting one) set back to just short of it."""
    margin = 1e-3
    inf = torch.full_like(px, float("inf"))
    over = torch.stack([
        torch.where(px < old[:, 0], px - boxes[:, 0], inf),   # x1 moved left past the point
        torch.where(py < old[:, 1], py - boxes[:, 1], inf),
        torch.where(px > old[:, 2], boxes[:, 2] - px, inf),   # x2 moved right past it
        torch.where(py > old[:, 3], boxes[:, 3] - py, inf),
    ], dim=1)
    side = over.argmin(dim=1, keepdim=True)
    limit = torch.stack([px + margin, py + margin, px - margin, py - margin], dim=1)
    return boxes.scatter(1, side, limit.gather(1, side))


def refine_boxes(planes: list[np.ndarray], plane_index, boxes, cfg: CCGRConfig, *,
                 points=None, others: list[np.ndarray] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Refine boxes on their class planes.

    Args:
        planes: ``P`` score planes ``float (H_p, W_p)`` in 0..1, each at its image's size.
        plane_index: ``int (N,)``, the plane of each box.
        boxes: ``float (N, 4)`` x1, y1, x2, y2 in pixels.
        points: ``float (N, 2)`` each box's own point (NaN: none), or None.
        others: per box, ``float (Q_i, 2)``: the stop points it may not take in
            (:func:`stop_points`).
        progress: called with ``(boxes done, N)`` after each chunk.
    Returns:
        ``float (N, 4)`` refined boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    plane_index = np.asarray(plane_index, dtype=np.int64).reshape(-1)
    n = len(boxes)
    if points is None:
        points = np.full((n, 2), np.nan)
    points = np.asarray(points, dtype=np.float64).reshape(n, 2)
    others = others if others is not None else [np.zeros((0, 2))] * n
    out = boxes.copy()
    done = 0
    for idx in _chunks(planes, plane_index, cfg):  # a chunk's integral images are built, used and dropped
        if cfg.steps:
            used, local = np.unique(plane_index[idx], return_inverse=True)
            out[idx] = _refine_chunk(integral_images([planes[p] for p in used]), local.reshape(-1), boxes[idx],
                                     points[idx], [others[i] for i in idx], cfg)
        done += len(idx)
        if progress:
            progress(done, n)
    return out


def _chunks(planes, plane_index: np.ndarray, cfg: CCGRConfig):
    """Box indices in chunks of at most ``cfg.chunk`` boxes whose planes hold at most
    ``cfg.chunk_pixels`` pixels (a plane is never split)."""
    order = np.argsort(plane_index, kind="stable")
    chunk: list[int] = []
    seen: set[int] = set()
    pixels = 0
    for i in order:
        p = int(plane_index[i])
        if p not in seen:
            h, w = planes[p].shape
            if chunk and (pixels + h * w > cfg.chunk_pixels or len(chunk) >= cfg.chunk):
                yield np.array(chunk)
                chunk, seen, pixels = [], set(), 0
            seen.add(p)
            pixels += h * w
        elif len(chunk) >= cfg.chunk:
            yield np.array(chunk)
            chunk, seen, pixels = [], {p}, planes[p].size
        chunk.append(int(i))
    if chunk:
        yield np.array(chunk)


def _refine_chunk(integ: Integrals, plane_index, boxes, points, others, cfg: CCGRConfig) -> np.ndarray:
    n = len(boxes)
    plane = torch.from_numpy(np.ascontiguousarray(plane_index))
    sizes = integ.sizes[plane]
    off, stride, w, h = integ.offset[plane], (sizes[:, 0] + 1).long(), sizes[:, 0], sizes[:, 1]
    start = torch.from_numpy(boxes.copy())
    scale = (start[:, 2:] - start[:, :2]).clamp(min=1.0).repeat(1, 2)  # parameters in units of the box's sides
    own = torch.from_numpy(np.nan_to_num(points, nan=0.0))
    has_own = torch.from_numpy(~np.isnan(points).any(axis=1))
    lens = torch.tensor([len(o) for o in others], dtype=torch.int64)  # stop points, padded to (N, Qmax, 2)
    oth_mask = torch.arange(int(lens.max())) < lens[:, None]
    oth = torch.zeros((n, oth_mask.shape[1], 2), dtype=torch.float64)
    oth[oth_mask] = torch.from_numpy(np.concatenate([np.asarray(o, dtype=np.float64).reshape(-1, 2) for o in others]))
    with torch.no_grad():
        b0 = start.clone()
        _project(b0, b0.clone(), sizes, own, has_own, oth, oth_mask)
    a_start = ((b0[:, 2] - b0[:, 0]) * (b0[:, 3] - b0[:, 1])).clamp(min=1.0)
    u = torch.zeros_like(start, requires_grad=True)
    opt = _Adam(u, cfg.lr, cfg.steps)
    for _ in range(cfg.steps):
        b = b0 + u * scale
        s_in, a_in = _box_sums(integ.flat, off, stride, b, w, h)
        s_out, a_out = (_box_sums(integ.flat, off, stride, _context(b, cfg.context), w, h)
                        if cfg.objective == "gap" else (None, None))
        (grad,) = torch.autograd.grad(_loss(cfg, s_in, a_in, s_out, a_out, a_start).sum(), u)
        with torch.no_grad():
            old = b.detach().clone()
            opt.step(grad)
            new = b0 + u * scale
            _project(new, old, sizes, own, has_own, oth, oth_mask)
            u.copy_((new - b0) / scale)
    with torch.no_grad():
        return (b0 + u * scale).numpy()


class _Adam:
    """``torch.optim.Adam(lr=lr)`` (betas 0.9, 0.999, eps 1e-8) stepped under
    ``CosineAnnealingLR(T_max=steps)``, the same arithmetic op for op (a test holds it to
    torch.optim's, bit for bit), without torch.optim's one-off import of torch._dynamo (about a
    second a process) and its per-step bookkeeping."""

    def __init__(self, param: torch.Tensor, lr: float, steps: int) -> None:
        self.param, self.lr, self.steps, self.t = param, lr, steps, 0
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)

    def step(self, grad: torch.Tensor) -> None:
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        self.t += 1
        self.m.lerp_(grad, 1 - beta1)
        self.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(self.t)
        step_size = self.lr / (1 - beta1 ** step)
        denom = (self.v.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
        self.param.addcdiv_(self.m, denom, value=-step_size)
        e, n = self.t, self.steps  # the schedule's recursive form, as CosineAnnealingLR.get_lr
        if e <= n:
            self.lr = (1 + math.cos(math.pi * e / n)) / (1 + math.cos(math.pi * (e - 1) / n)) * (self.lr - 0.0) + 0.0
