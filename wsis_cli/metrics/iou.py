"""Mask IoU on numpy arrays."""

from __future__ import annotations

import numpy as np

__all__ = ["mask_iou"]


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (N, M) of bool masks ``a`` (N, H, W) and ``b`` (M, H, W), in [0, 1].

    Two empty masks have IoU 0 (nothing to overlap), never NaN.
    """
    a = np.asarray(a, dtype=bool).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b, dtype=bool).reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    out = np.zeros_like(inter, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out
