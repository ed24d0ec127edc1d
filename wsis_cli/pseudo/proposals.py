"""Box proposals for one peak, ranked by the CCGR paper's Eq. 4: the bags the MIL branch learns from.

The paper takes MCG proposals; MCG is not available here, so an image's candidate boxes are

1. **selective search** (OpenCV's ``SelectiveSearchSegmentation``, fast mode) run on the image
   shrunk so that its longer side is at most ``max_side`` px (default 200: about 0.1-0.3 s an
   image on one core), its boxes scaled back to the image;
2. **boxes grown from the seed**: the seed box (the peak's region box, or a detector's box) at
   :data:`SEED_SCALES` times its side, shifted by :data:`SEED_SHIFTS` of its side, and the same
   scales re-centred on the peak point; all clipped to the image.

For a seed with a peak ``point`` the candidates are those containing the point and no other
point of its class in the image (the paper's "proposals containing only this peak"; when that
leaves none, those containing the point). For a seed without a point (a detector's box, the
paper's later rounds) the candidates are the seed box itself and the boxes of highest IoU with it
(``top`` of them in all, as the paper's 10 highest overlaps).

Candidates are ranked by Eq. 4, ``R(B) = objectness(B) - 0.1 x sum_B(1 - O) / |B|``, ``O`` the
peak's class plane of the score map (0..1). MCG's objectness is replaced by **superpixel
straddling** (Alexe et al., "Measuring the objectness of image windows", TPAMI 2012): with the
superpixels ``s`` of a Felzenszwalb graph segmentation (``createGraphSegmentation``, on the same
shrunk image), ``SS(B) = 1 - sum_s min(|s n B|, |s \\ B|) / |B|``, in 0..1: 1 for a box whose
border cuts no superpixel, low for a box that cuts through regions (a box on a part of an object,
or one half on background). Both terms are read from integral images (one per superpixel), so a
box costs O(superpixels), never a loop over its pixels. Near-duplicates (IoU > ``dedup_iou``
with a better-ranked box) are dropped; the ``top`` best make the bag, best first.

Everything is numpy + OpenCV; boxes are ``x1, y1, x2, y2`` floats in image pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from wsis_cli.boxes import box_iou, nms
from wsis_cli.errors import WsisError

__all__ = ["ProposalConfig", "SEED_SCALES", "SEED_SHIFTS", "BACKGROUND_WEIGHT", "selective_search", "superpixels",
           "straddling", "background_share", "rank_score", "seed_boxes", "ImageProposals", "peak_bag"]

BACKGROUND_WEIGHT = 0.1  # Eq. 4's weight of the background share
SEED_SCALES = (0.75, 1.0, 1.25, 1.5, 2.0)  # seed box sides x these
SEED_SHIFTS = (-0.25, 0.0, 0.25)  # and moved by these fractions of its side (x and y)
SEGMENT_CHUNK = 64  # superpixels whose integral images are held at once


@dataclass(frozen=True)
class ProposalConfig:
    top: int = 10            # proposals per bag (the paper's 10)
    max_side: int = 200      # selective search and superpixels run on the image shrunk to this longer side
    min_side: float = 4.0    # proposals narrower or lower than this (image px) are dropped
    dedup_iou: float = 0.9   # a proposal overlapping a better one by more than this is dropped
    seg_sigma: float = 0.8   # Felzenszwalb segmentation of the straddling term: smoothing,
    seg_k: float = 200.0     # scale (larger: larger superpixels),
    seg_min_size: int = 20   # and smallest superpixel (px of the shrunk image)

    def __post_init__(self) -> None:
        if self.top < 1:
            raise WsisError(f"--top must be at least 1, got {self.top}")
        if self.max_side < 16:
            raise WsisError(f"--max-side must be at least 16, got {self.max_side}")
        if not 0.0 < self.dedup_iou <= 1.0:
            raise WsisError(f"dedup_iou must be in (0, 1], got {self.dedup_iou}")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- candidates
def _shrunk(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``(BGR image with longer side <= max_side, scale = shrunk / original)``."""
    import cv2

    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    if s < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return bgr, s


def selective_search(rgb: np.ndarray, *, max_side: int = 200) -> np.ndarray:
    """Selective search (fast mode) boxes ``float64 (N, 4)`` ``x1, y1, x2, y2`` in the pixels of
    ``rgb`` (``HxWx3`` uint8), computed on the image shrunk to ``max_side``; sorted, without
    duplicates (OpenCV ranks its boxes with random numbers: the set is fixed, its order is not)."""
    import cv2

    bgr, s = _shrunk(rgb, max_side)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    ss.switchToSelectiveSearchFast()
    rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / s
    h, w = rgb.shape[:2]
    return np.unique(np.clip(boxes, 0, [w, h, w, h]), axis=0)


def superpixels(rgb: np.ndarray, cfg: ProposalConfig) -> tuple[np.ndarray, float]:
    """``(int32 labels (h, w) of the shrunk image, its scale)``: Felzenszwalb segments, 0..S-1."""
    import cv2

    bgr, s = _shrunk(rgb, cfg.max_side)
    seg = cv2.ximgproc.segmentation.createGraphSegmentation(cfg.seg_sigma, cfg.seg_k, cfg.seg_min_size)
    return seg.processImage(bgr).astype(np.int32), s


def seed_boxes(box, point, *, width: int, height: int) -> np.ndarray:
    """Boxes grown from a seed (see the module docstring): ``box`` (x1, y1, x2, y2, or None) scaled
    and shifted, and, with ``point`` (x, y, or None), re-centred on it; clipped to the image."""
    out = []
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        centres = [(cx + dx * bw, cy + dy * bh) for dx in SEED_SHIFTS for dy in SEED_SHIFTS]
        if point is not None:
            centres.append((float(point[0]), float(point[1])))
        for (px, py) in centres:
            for k in SEED_SCALES:
                out.append([px - k * bw / 2, py - k * bh / 2, px + k * bw / 2, py + k * bh / 2])
    boxes = np.asarray(out, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes, 0, [width, height, width, height])


# ----------------------------------------------------------------------------- the two terms of Eq. 4
def _integral(img: np.ndarray) -> np.ndarray:
    """Zero-padded 2-D cumulative sums over the last two axes: ``(..., h + 1, w + 1)`` float64."""
    out = np.zeros((*img.shape[:-2], img.shape[-2] + 1, img.shape[-1] + 1), dtype=np.float64)
    out[..., 1:, 1:] = img.cumsum(-2).cumsum(-1)
    return out


def _pixel_bounds(boxes: np.ndarray, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Integer ``x1, y1, x2, y2`` (x2, y2 exclusive) of the pixels each box covers after scaling,
    at least one pixel, inside the ``height x width`` grid."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    x1 = np.clip(np.floor(b[:, 0] + 1e-6), 0, width - 1).astype(np.int64)
    y1 = np.clip(np.floor(b[:, 1] + 1e-6), 0, height - 1).astype(np.int64)
    x2 = np.clip(np.ceil(b[:, 2] - 1e-6), x1 + 1, width).astype(np.int64)
    y2 = np.clip(np.ceil(b[:, 3] - 1e-6), y1 + 1, height).astype(np.int64)
    return np.stack([x1, y1, x2, y2], axis=1)


def _box_sums(integral: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Sums of each pixel box ``px`` (N, 4) in ``integral`` (..., h + 1, w + 1) -> (..., N)."""
    x1, y1, x2, y2 = px.T
    return integral[..., y2, x2] - integral[..., y1, x2] - integral[..., y2, x1] + integral[..., y1, x1]


def straddling(labels: np.ndarray, boxes: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """Superpixel straddling ``float64 (N,)`` in 0..1 of ``boxes`` (image px, times ``scale`` gives
    the pixels of ``labels``, an ``int (h, w)`` segmentation into 0..S-1):
    ``1 - sum_s min(|s n B|, |s \\ B|) / |B|``."""
    h, w = labels.shape
    px = _pixel_bounds(boxes, h, w, scale)
    area = ((px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])).astype(np.float64)
    sizes = np.bincount(labels.ravel()).astype(np.float64)
    cut = np.zeros(len(px))
    for start in range(0, len(sizes), SEGMENT_CHUNK):
        ids = np.arange(start, min(start + SEGMENT_CHUNK, len(sizes)))
        inside = _box_sums(_integral((labels[None] == ids[:, None, None]).astype(np.float64)), px)  # (S, N)
        cut += np.minimum(inside, sizes[ids, None] - inside).sum(axis=0)
    return 1.0 - cut / np.maximum(area, 1.0)


def background_share(plane: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Eq. 4's second factor ``sum_B (1 - O) / |B|`` ``float64 (N,)``: the mean of ``1 - plane``
    (``float (H, W)`` in 0..1, image px) over the pixels each box covers."""
    h, w = plane.shape
    px = _pixel_bounds(boxes, h, w)
    area = ((px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])).astype(np.float64)
    return 1.0 - _box_sums(_integral(plane.astype(np.float64)), px) / area


def rank_score(objectness: np.ndarray, plane: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Eq. 4: ``R(B) = objectness(B) - 0.1 x sum_B (1 - O) / |B|`` (``float64 (N,)``)."""
    return np.asarray(objectness, dtype=np.float64) - BACKGROUND_WEIGHT * background_share(plane, boxes)


# ----------------------------------------------------------------------------- one image, one peak
class ImageProposals:
    """One image's selective-search boxes and superpixels, shared by all its peaks."""

    def __init__(self, rgb: np.ndarray, cfg: ProposalConfig):
        self.height, self.width = rgb.shape[:2]
        self.cfg = cfg
        self.boxes = selective_search(rgb, max_side=cfg.max_side)
        self.labels, self.scale = superpixels(rgb, cfg)

    def _candidates(self, seed, point, others) -> np.ndarray:
        boxes = np.concatenate([self.boxes, seed_boxes(seed, point, width=self.width, height=self.height)])
        boxes = np.unique(np.round(boxes, 2), axis=0)
        wide = ((boxes[:, 2] - boxes[:, 0]) >= self.cfg.min_side) & ((boxes[:, 3] - boxes[:, 1]) >= self.cfg.min_side)
        if seed is not None:
            wide |= (boxes == np.round(np.asarray(seed, dtype=np.float64), 2)).all(axis=1)  # a small seed stays
        boxes = boxes[wide]
        if point is None:
            return boxes
        holds = _contains(boxes, np.asarray(point, dtype=np.float64).reshape(1, 2))[:, 0]
        alone = holds & ~_contains(boxes, np.asarray(others, dtype=np.float64).reshape(-1, 2)).any(axis=1)
        return boxes[alone] if alone.any() else boxes[holds]

    def bag(self, plane: np.ndarray, *, seed=None, point=None, others=()) -> tuple[np.ndarray, np.ndarray]:
        """A peak's bag: ``(boxes float64 (k, 4), Eq. 4 ranks float64 (k,))``, best first, k <= top.
        ``plane``: the peak's class plane ``(H, W)`` in 0..1; ``seed``: its box (x1, y1, x2, y2) or
        None; ``point``: its (x, y) or None; ``others``: the other points of its class (see the
        module docstring)."""
        if seed is None and point is None:
            raise ValueError("a bag needs a seed box or a point")
        if seed is not None:
            seed = np.clip(np.asarray(seed, dtype=np.float64), 0, [self.width, self.height] * 2)
        boxes = self._candidates(seed, point, others)
        if len(boxes) == 0:
            return np.zeros((0, 4)), np.zeros(0)
        if point is None:  # the box itself and its highest overlaps
            seed_arr = np.asarray(seed, dtype=np.float64).reshape(1, 4)
            boxes = np.concatenate([seed_arr, boxes[~(boxes == np.round(seed_arr, 2)).all(axis=1)]])
            iou = box_iou(seed_arr, boxes)[0]
            iou[0] = np.inf
            boxes = boxes[np.argsort(-iou, kind="stable")[: 4 * self.cfg.top]]
            boxes = boxes[np.sort(nms(boxes, -np.arange(len(boxes), dtype=np.float64),
                                      iou_thr=self.cfg.dedup_iou))[: self.cfg.top]]
        ranks = rank_score(straddling(self.labels, boxes, scale=self.scale), plane, boxes)
        keep = nms(boxes, ranks, iou_thr=self.cfg.dedup_iou)[: self.cfg.top]
        return boxes[keep], ranks[keep]


def _contains(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """bool (N, P): box n holds point p (borders included)."""
    px, py = points[None, :, 0], points[None, :, 1]
    return ((boxes[:, None, 0] <= px) & (px <= boxes[:, None, 2]) & (boxes[:, None, 1] <= py)
            & (py <= boxes[:, None, 3]))


def peak_bag(rgb: np.ndarray, plane: np.ndarray, cfg: ProposalConfig, *, seed=None, point=None,
             others=()) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`ImageProposals.bag` for one peak of one image (an image with several peaks should
    make one :class:`ImageProposals` and ask it for each)."""
    return ImageProposals(rgb, cfg).bag(plane, seed=seed, point=point, others=others)
