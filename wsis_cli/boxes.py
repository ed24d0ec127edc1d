"""Box geometry on numpy arrays.

Inside the core boxes are ``float64[N, 4]`` arrays in ``x1, y1, x2, y2`` (pixel edges, so a
box covering pixel columns 0..9 is ``x1=0, x2=10``); COCO ``[x, y, w, h]`` appears only at the
JSON edge and is converted with :func:`xywh_to_xyxy` / :func:`xyxy_to_xywh`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["xywh_to_xyxy", "xyxy_to_xywh", "box_area", "box_iou", "mask_to_box"]


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
