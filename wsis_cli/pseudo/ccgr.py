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

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["OBJECTIVES", "CCGRConfig", "integral_images", "box_sums", "refine_boxes", "crop_masks", "stop_points", "STOPS"]

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
    chunk: int = 8192  # boxes optimised together, at most
    chunk_pixels: int = 96_000_000  # plane pixels of a chunk, at most (its integral images: 8 bytes each)

    def __post_init__(self) -> None:
        from wsis_cli.errors import WsisError

        if self.objective not in OBJECTIVES:
            raise WsisError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.stop not in STOPS:
            raise WsisError(f"--stop must be one of {', '.join(STOPS)}, got {self.stop!r}")
        if not 0.0 <= self.threshold < 1.0:
            raise WsisError(f"--threshold must be in [0, 1), got {self.threshold}")
        if self.context <= 1.0:
            raise WsisError(f"--context must be > 1 (the ring is the box scaled by it minus the box), got {self.context}")
        if self.steps < 0 or self.lr <= 0:
            raise WsisError("--steps must be >= 0 and --lr > 0")

    def to_dict(self) -> dict:
        return asdict(self)


def integral_images(planes: list[np.ndarray]) -> torch.Tensor:
    """Integral images of planes of any sizes, zero-padded to one tensor.

    Args:
        planes: ``P`` float arrays ``(H_p, W_p)``.
    Returns:
        DoubleTensor[P, Hmax + 1, Wmax + 1]: ``I[p, y, x]`` = sum of plane ``p`` over rows ``< y``
        and columns ``< x``.
    """
    hmax = max((p.shape[0] for p in planes), default=0)
    wmax = max((p.shape[1] for p in planes), default=0)
    out = np.zeros((len(planes), hmax + 1, wmax + 1), dtype=np.float64)
    for i, p in enumerate(planes):
        h, w = p.shape
        out[i, 1:h + 1, 1:w + 1] = np.cumsum(np.cumsum(p, axis=0, dtype=np.float64), axis=1)
        out[i, h + 1:, 1:w + 1] = out[i, h, 1:w + 1]  # beyond the plane the sums stay put
        out[i, :, w + 1:] = out[i, :, w:w + 1]
    return torch.from_numpy(out)


def _lookup(integral: torch.Tensor, plane: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Bilinear value of ``integral[plane]`` at continuous ``(x, y)`` (already clamped to the plane,
    whose width and height are ``w``, ``h``).

    The cell is found within the plane's own size, not the padded tensor's: at its far border
    (``x == w``) the value is read from the last cell with weight 1, so the derivative there is
    the plane's last column (row), as it is for the largest plane of a chunk, not the flat
    padding beyond it, and a box gets the same gradient however its chunk is padded."""
    _, hp, wp = integral.shape
    x0 = torch.minimum(x.detach().floor(), w - 1).clamp(0, wp - 2)
    y0 = torch.minimum(y.detach().floor(), h - 1).clamp(0, hp - 2)
    fx, fy = x - x0, y - y0
    base = plane * (hp * wp) + y0.long() * wp + x0.long()
    flat = integral.reshape(-1)
    v00, v01 = flat[base], flat[base + 1]
    v10, v11 = flat[base + wp], flat[base + wp + 1]
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def box_sums(integral: torch.Tensor, plane: torch.Tensor, boxes: torch.Tensor,
             sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and area of each box's plane inside the box, the box clipped to its plane.

    Args:
        integral (DoubleTensor[P, H+1, W+1]): from :func:`integral_images`.
        plane (LongTensor[N]): each box's plane.
        boxes (Tensor[N, 4]): x1, y1, x2, y2 in pixels (continuous).
        sizes (Tensor[N, 2]): each box's plane width, height.
    Returns:
        (Tensor[N], Tensor[N]): sums and clipped areas.
    """
    w, h = sizes[:, 0], sizes[:, 1]
    zero = torch.zeros_like(w)
    x1 = _clip(boxes[:, 0], zero, w)
    y1 = _clip(boxes[:, 1], zero, h)
    x2 = torch.maximum(_clip(boxes[:, 2], zero, w), x1)
    y2 = torch.maximum(_clip(boxes[:, 3], zero, h), y1)
    s = (_lookup(integral, plane, x2, y2, w, h) - _lookup(integral, plane, x1, y2, w, h)
         - _lookup(integral, plane, x2, y1, w, h) + _lookup(integral, plane, x1, y1, w, h))
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
    """Apply the constraints in place (see the module docstring)."""
    margin = 1e-3
    w, h = sizes[:, 0], sizes[:, 1]
    # other points of the class: set back the side that crossed one, the least overshooting side
    for q in range(others.shape[1]):
        px, py = others[:, q, 0], others[:, q, 1]
        inside_new = (boxes[:, 0] <= px) & (px <= boxes[:, 2]) & (boxes[:, 1] <= py) & (py <= boxes[:, 3])
        inside_old = (old[:, 0] <= px) & (px <= old[:, 2]) & (old[:, 1] <= py) & (py <= old[:, 3])
        hit = others_mask[:, q] & inside_new & ~inside_old
        if not bool(hit.any()):
            continue
        inf = torch.full_like(px, float("inf"))
        over = torch.stack([
            torch.where(px < old[:, 0], px - boxes[:, 0], inf),   # x1 moved left past the point
            torch.where(py < old[:, 1], py - boxes[:, 1], inf),
            torch.where(px > old[:, 2], boxes[:, 2] - px, inf),   # x2 moved right past it
            torch.where(py > old[:, 3], boxes[:, 3] - py, inf),
        ], dim=1)
        side = over.argmin(dim=1)
        limit = torch.stack([px + margin, py + margin, px - margin, py - margin], dim=1)
        rows = hit.nonzero().squeeze(1)
        boxes[rows, side[rows]] = limit[rows, side[rows]]
    # own point stays inside
    x, y = own[:, 0], own[:, 1]
    boxes[:, 0] = torch.where(has_own, torch.minimum(boxes[:, 0], x), boxes[:, 0])
    boxes[:, 1] = torch.where(has_own, torch.minimum(boxes[:, 1], y), boxes[:, 1])
    boxes[:, 2] = torch.where(has_own, torch.maximum(boxes[:, 2], x), boxes[:, 2])
    boxes[:, 3] = torch.where(has_own, torch.maximum(boxes[:, 3], y), boxes[:, 3])
    # image bounds, 1 px at least
    boxes[:, 0] = torch.minimum(boxes[:, 0].clamp(min=0), w - 1)
    boxes[:, 1] = torch.minimum(boxes[:, 1].clamp(min=0), h - 1)
    boxes[:, 2] = torch.maximum(torch.minimum(boxes[:, 2], w), boxes[:, 0] + 1)
    boxes[:, 3] = torch.maximum(torch.minimum(boxes[:, 3], h), boxes[:, 1] + 1)


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
    for idx in _chunks(planes, plane_index, cfg):
        used = np.unique(plane_index[idx])
        remap = {int(p): i for i, p in enumerate(used)}
        local = np.array([remap[int(p)] for p in plane_index[idx]], dtype=np.int64)
        out[idx] = _refine_chunk([planes[p] for p in used], local, boxes[idx], points[idx],
                                 [others[i] for i in idx], cfg)
        done += len(idx)
        if progress:
            progress(done, n)
    return out


def _chunks(planes, plane_index: np.ndarray, cfg: CCGRConfig):
    """Box indices in chunks of at most ``cfg.chunk`` boxes whose planes hold at most
    ``cfg.chunk_pixels`` pixels (padded to the largest plane; a plane is never split)."""
    order = np.argsort(plane_index, kind="stable")
    chunk: list[int] = []
    seen: set[int] = set()
    hmax = wmax = 0
    for i in order:
        p = int(plane_index[i])
        if p not in seen:
            h, w = planes[p].shape
            grown = (len(seen) + 1) * max(hmax, h) * max(wmax, w)
            if chunk and (grown > cfg.chunk_pixels or len(chunk) >= cfg.chunk):
                yield np.array(chunk)
                chunk, seen, hmax, wmax = [], set(), 0, 0
            seen.add(p)
            hmax, wmax = max(hmax, h), max(wmax, w)
        elif len(chunk) >= cfg.chunk:
            yield np.array(chunk)
            chunk, seen, hmax, wmax = [], {p}, *planes[p].shape
        chunk.append(int(i))
    if chunk:
        yield np.array(chunk)


def _refine_chunk(planes, plane_index, boxes, points, others, cfg: CCGRConfig) -> np.ndarray:
    n = len(boxes)
    if n == 0 or cfg.steps == 0:
        return boxes.copy()
    integral = integral_images(planes)
    plane = torch.from_numpy(plane_index)
    sizes = torch.tensor([[planes[p].shape[1], planes[p].shape[0]] for p in plane_index], dtype=torch.float64)
    start = torch.from_numpy(boxes.copy())
    scale = (start[:, 2:] - start[:, :2]).clamp(min=1.0).repeat(1, 2)  # parameters in units of the box's sides
    own = torch.from_numpy(np.nan_to_num(points, nan=0.0))
    has_own = torch.from_numpy(~np.isnan(points).any(axis=1))
    q = max((len(o) for o in others), default=0)
    oth = torch.zeros((n, q, 2), dtype=torch.float64)
    oth_mask = torch.zeros((n, q), dtype=torch.bool)
    for i, o in enumerate(others):
        if len(o):
            oth[i, :len(o)] = torch.as_tensor(np.asarray(o, dtype=np.float64))
            oth_mask[i, :len(o)] = True
    with torch.no_grad():
        b0 = start.clone()
        _project(b0, b0.clone(), sizes, own, has_own, oth, oth_mask)
    a_start = ((b0[:, 2] - b0[:, 0]) * (b0[:, 3] - b0[:, 1])).clamp(min=1.0)
    u = torch.zeros_like(start, requires_grad=True)
    opt = torch.optim.Adam([u], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    for _ in range(cfg.steps):
        b = b0 + u * scale
        s_in, a_in = box_sums(integral, plane, b, sizes)
        s_out, a_out = (box_sums(integral, plane, _context(b, cfg.context), sizes) if cfg.objective == "gap"
                        else (None, None))
        loss = _loss(cfg, s_in, a_in, s_out, a_out, a_start).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            old = b.detach().clone()
        opt.step()
        sched.step()
        with torch.no_grad():
            new = b0 + u * scale
            _project(new, old, sizes, own, has_own, oth, oth_mask)
            u.copy_((new - b0) / scale)
    with torch.no_grad():
        return (b0 + u * scale).numpy()


def crop_masks(plane: np.ndarray, boxes: np.ndarray, thr: float) -> list[np.ndarray]:
    """Masks ``bool (H, W)``: ``plane > thr`` inside each box (pixels whose centres lie in it)."""
    from wsis_cli.pseudo.fallback import pixel_span

    h, w = plane.shape
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        m = np.zeros((h, w), dtype=bool)
        c1, c2 = pixel_span(x1, x2, w)
        r1, r2 = pixel_span(y1, y2, h)
        m[r1:r2, c1:c2] = plane[r1:r2, c1:c2] > thr
        out.append(m)
    return out
