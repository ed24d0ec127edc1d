"""Masks that stand in for a failed segmentation: the ellipse inscribed in a box, or the box."""

from __future__ import annotations

import numpy as np

__all__ = ["FALLBACKS", "ellipse_mask", "box_mask", "fallback_mask"]

FALLBACKS = ("ellipse", "box", "none")


def box_mask(box, height: int, width: int) -> np.ndarray:
    """``HxW`` bool: the pixels whose centres lie inside ``x1, y1, x2, y2`` (at least one pixel
    for a box inside the image)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c1, r1 = int(np.clip(np.floor(x1 + 0.5), 0, width - 1)), int(np.clip(np.floor(y1 + 0.5), 0, height - 1))
    c2, r2 = int(np.clip(np.ceil(x2 - 0.5), c1 + 1, width)), int(np.clip(np.ceil(y2 - 0.5), r1 + 1, height))
    m = np.zeros((height, width), dtype=bool)
    m[r1:r2, c1:c2] = True
    return m


def ellipse_mask(box, height: int, width: int) -> np.ndarray:
    """``HxW`` bool: the ellipse inscribed in ``x1, y1, x2, y2`` (pixel centres inside it); boxes
    too thin for any pixel centre to fall inside get the box's own pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, ax, ay = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    m = np.zeros((height, width), dtype=bool)
    if ax > 0 and ay > 0:
        r1, r2 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
        c1, c2 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
        yy, xx = np.mgrid[r1:r2, c1:c2]
        inside = ((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1.0
        m[r1:r2, c1:c2] = inside
    return m if m.any() else box_mask(box, height, width)


def fallback_mask(kind: str, box, height: int, width: int) -> np.ndarray | None:
    if kind == "ellipse":
        return ellipse_mask(box, height, width)
    if kind == "box":
        return box_mask(box, height, width)
    return None
