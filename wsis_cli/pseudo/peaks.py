"""Peaks of a class response map: the instance centres of PRM (Zhou et al. 2018).

A peak is a value that is the maximum of its ``kernel x kernel`` window and strictly above the
map's median — the rule the classifier is trained with (:func:`wsis_cli.models.classifier.peak_mask`).
A plateau of equal maxima gives one peak (its first pixel in raster order).
"""

from __future__ import annotations

import numpy as np

__all__ = ["find_peaks", "subpixel"]


def find_peaks(score_map: np.ndarray, *, kernel: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of one map.

    Args:
        score_map: ``float (h, w)``.
        kernel: the window side (odd).
    Returns:
        ``int (N, 2)`` peak positions as ``(row, col)`` and ``float (N,)`` their values, strongest
        first (ties in raster order). ``(0, 2)`` and ``(0,)`` for a constant map.
    """
    from scipy import ndimage

    m = np.asarray(score_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"score_map must be (h, w), got {m.shape}")
    if m.size == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    pooled = ndimage.maximum_filter(m, size=kernel, mode="constant", cval=-np.inf)
    is_peak = (m >= pooled) & (m > np.median(m))
    labels, n = ndimage.label(is_peak, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    flat = labels.ravel()
    first = np.full(n + 1, -1, dtype=np.int64)
    idx = np.flatnonzero(flat)
    # the first raster-order pixel of each plateau component
    _, pos = np.unique(flat[idx], return_index=True)
    first[1:] = idx[pos]
    rc = np.stack(np.unravel_index(first[1:], m.shape), axis=1).astype(np.int64)
    values = m.ravel()[first[1:]]
    order = np.lexsort((first[1:], -values))
    return rc[order], values[order]


def subpixel(score_map: np.ndarray, rc: np.ndarray) -> np.ndarray:
    """Refine peak positions to the centroid of the positive part of their 3x3 neighbourhood.

    Returns ``float (N, 2)`` as ``(x, y)`` in map pixel units, pixel centres at ``+0.5``.
    """
    m = np.asarray(score_map, dtype=np.float64)
    h, w = m.shape
    out = np.zeros((len(rc), 2))
    for i, (r, c) in enumerate(np.asarray(rc).reshape(-1, 2)):
        r1, r2, c1, c2 = max(r - 1, 0), min(r + 2, h), max(c - 1, 0), min(c + 2, w)
        win = m[r1:r2, c1:c2] - m[r1:r2, c1:c2].min()
        total = win.sum()
        if total <= 0:
            out[i] = (c + 0.5, r + 0.5)
            continue
        ys, xs = np.mgrid[r1:r2, c1:c2]
        out[i] = ((win * (xs + 0.5)).sum() / total, (win * (ys + 0.5)).sum() / total)
    return out
