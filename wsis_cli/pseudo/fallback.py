"""Masks that stand in for a failed segmentation: the ellipse inscribed in a box, or the box."""

from __future__ import annotations

import numpy as np

__all__ = ["FALLBACKS", "Crop", "ellipse_mask", "box_mask", "fallback_mask", "ellipse_crop", "box_crop",
           "fallback_crop", "paste"]

FALLBACKS = ("ellipse", "box", "none")


Crop = tuple[np.ndarray, tuple[int, int]]  # (mask over a window, (row0, col0) of the window)


def _window(box, height: int, width: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    r1, r2 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
    c1, c2 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
    return r1, max(r2, r1), c1, max(c2, c1)


def pixel_span(lo: float, hi: float, limit: int) -> tuple[int, int]:
    """The pixels whose centres lie in [lo, hi], at least one, inside [0, limit)."""
    a = int(np.clip(np.floor(lo + 0.5), 0, limit - 1))
    b = int(np.clip(np.ceil(hi - 0.5), a + 1, limit))
    return a, b


def box_crop(box, height: int, width: int) -> Crop:
    """The pixels whose centres lie inside ``x1, y1, x2, y2`` (at least one pixel for a box
    inside the image), as a crop."""
    x1, y1, x2, y2 = (float(v) for v in box)
    (c1, c2), (r1, r2) = pixel_span(x1, x2, width), pixel_span(y1, y2, height)
    return np.ones((r2 - r1, c2 - c1), dtype=bool), (r1, c1)


def ellipse_crop(box, height: int, width: int) -> Crop:
    """The ellipse inscribed in ``x1, y1, x2, y2`` (pixel centres inside it), as a crop; boxes
    too thin for any pixel centre to fall inside get the box's own pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, ax, ay = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if ax > 0 and ay > 0:
        r1, r2, c1, c2 = _window(box, height, width)
        yy, xx = np.mgrid[r1:r2, c1:c2]
        inside = ((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1.0
        if inside.any():
            return inside, (r1, c1)
    return box_crop(box, height, width)


def paste(crop: Crop, height: int, width: int) -> np.ndarray:
    """A crop as a full ``HxW`` bool mask."""
    m, (r0, c0) = crop
    full = np.zeros((height, width), dtype=bool)
    full[r0:r0 + m.shape[0], c0:c0 + m.shape[1]] = m
    return full


def box_mask(box, height: int, width: int) -> np.ndarray:
    """``HxW`` bool: the pixels whose centres lie inside ``x1, y1, x2, y2``."""
    return paste(box_crop(box, height, width), height, width)


def ellipse_mask(box, height: int, width: int) -> np.ndarray:
    """``HxW`` bool: the ellipse inscribed in ``x1, y1, x2, y2`` (see :func:`ellipse_crop`)."""
    return paste(ellipse_crop(box, height, width), height, width)


def fallback_crop(kind: str, box, height: int, width: int) -> Crop | None:
    if kind == "ellipse":
        return ellipse_crop(box, height, width)
    if kind == "box":
        return box_crop(box, height, width)
    return None


def fallback_mask(kind: str, box, height: int, width: int) -> np.ndarray | None:
    crop = fallback_crop(kind, box, height, width)
    return None if crop is None else paste(crop, height, width)
