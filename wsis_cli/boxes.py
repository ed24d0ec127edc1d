"""Box geometry on numpy arrays.

Inside the core boxes are ``float64[N, 4]`` arrays in ``x1, y1, x2, y2`` (pixel edges, so a
box covering pixel columns 0..9 is ``x1=0, x2=10``); COCO ``[x, y, w, h]`` appears only at the
JSON edge and is converted with :func:`xywh_to_xyxy` / :func:`xyxy_to_xywh`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SMALL_AREA", "xywh_to_xyxy", "xyxy_to_xywh", "box_area", "box_iou", "mask_to_box", "nms"]

SMALL_AREA = 64 * 64  # small vs large instances (COCO's AP_S/AP_L split, the hybrid paper's branches), in px


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 4) if arr.size else arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def xywh_to_xyxy(boxes) -> np.ndarray:
    """``[x, y, w, h]`` (N, 4) -> ``[x1, y1, x2, y2]`` (N, 4)."""
    b = _as_boxes(boxes).copy()
    b[:, 2:] += b[:, :2]
    return b


def xyxy_to_xywh(boxes) -> np.ndarray:
    """``[x1, y1, x2, y2]`` (N, 4) -> ``[x, y, w, h]`` (N, 4)."""
    b = _as_boxes(boxes).copy()
    b[:, 2:] -= b[:, :2]
    return b


def box_area(boxes) -> np.ndarray:
    """Areas (N,) of ``x1, y1, x2, y2`` boxes; inverted boxes have area 0."""
    b = _as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU (N, M) of ``x1, y1, x2, y2`` boxes, in [0, 1]; 0 where the union is empty."""
    a, b = _as_boxes(a), _as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight ``x1, y1, x2, y2`` box (4,) of a ``HxW`` bool mask; all zeros when it is empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return np.zeros(4)
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float64)


def nms(boxes: np.ndarray, scores: np.ndarray, category_ids: np.ndarray | None = None, *,
        iou_thr: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression, class-wise when ``category_ids`` is given.

    ``boxes`` (N, 4) ``x1, y1, x2, y2``; ``scores`` (N,); ``category_ids`` (N,) or None (all one
    class). A box is suppressed when its IoU with a kept, higher-ranked box of its class is
    above ``iou_thr`` (as torchvision's ``nms``). Ranking is by score, ties by index (the earlier
    first). Returns the kept indices (int64), best score first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(boxes)
    if len(scores) != n:
        raise ValueError("boxes and scores must have one length")
    cats = np.zeros(n, np.int64) if category_ids is None else np.asarray(category_ids, np.int64).reshape(-1)
    if len(cats) != n:
        raise ValueError("boxes and category_ids must have one length")
    order = np.argsort(-scores, kind="stable")
    keep = np.zeros(n, dtype=bool)
    for c in np.unique(cats):
        idx = order[cats[order] == c]  # this class, best first
        iou = box_iou(boxes[idx], boxes[idx])
        alive = np.ones(len(idx), dtype=bool)
        for i in range(len(idx)):
            if not alive[i]:
                continue
            keep[idx[i]] = True
            alive[i + 1:] &= iou[i, i + 1:] <= iou_thr
    return order[keep[order]].astype(np.int64)
