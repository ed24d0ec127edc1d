"""Class score maps on disk: the hand-over between a segmentation model and `pseudolabel ccgr`.

One file per image, ``DIR/<image file stem>.npz``, holding

- ``scores``: ``float (K, H, W)``, values in 0..1, one plane per class, any resolution (planes
  are resized to the image's size when read);
- ``category_ids``: ``int (K,)``, the dataset category id of each plane.

Any model can feed CCGR by writing these files; ``pseudolabel prm --save-maps`` does.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from wsis_cli.errors import InputError

__all__ = ["map_path", "read_score_maps", "write_score_maps"]


def map_path(maps_dir: str | os.PathLike, image: dict) -> Path:
    """``DIR/<stem of the image's file_name>.npz``."""
    return Path(maps_dir) / f"{Path(image['file_name']).stem}.npz"


def write_score_maps(path: str | os.PathLike, scores: np.ndarray, category_ids) -> None:
    """Write one image's maps atomically (``scores`` is cast to float32, clipped to 0..1)."""

    scores = np.clip(np.asarray(scores, dtype=np.float32), 0.0, 1.0)
    ids = np.asarray(category_ids, dtype=np.int64)
    if scores.ndim != 3 or scores.shape[0] != ids.shape[0]:
        raise ValueError(f"scores must be (K, H, W) with K = len(category_ids), got {scores.shape} and {ids.shape}")
    from wsis_cli.coco import write_atomic

    write_atomic(path, lambda fh: np.savez_compressed(fh, scores=scores, category_ids=ids), what="a score map file")


def read_score_maps(path: str | os.PathLike, *, height: int, width: int, record: str) -> dict[int, np.ndarray]:
    """``{category_id: float32 (height, width) plane}`` from one ``.npz`` file, each plane resized
    (bilinear) to the image. Any fault raises InputError naming the file and ``record``."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "no score map file for this image", record)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "scores" not in z or "category_ids" not in z:
                raise InputError(str(path), f"needs arrays 'scores' and 'category_ids', has {sorted(z.files)}", record)
            scores, ids = z["scores"], z["category_ids"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(str(path), f"not a readable .npz file ({e})", record) from None
    if scores.ndim != 3 or ids.ndim != 1 or scores.shape[0] != ids.shape[0] or 0 in scores.shape[1:]:
        raise InputError(str(path), f"'scores' must be (K, H, W) with H, W > 0 and 'category_ids' (K,), got "
                                    f"{scores.shape} and {ids.shape}", record)
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(str(path), f"'category_ids' must be integers, got {ids.dtype}", record)
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise InputError(str(path), f"'scores' must be numbers, got {scores.dtype}", record)
    scores = scores.astype(np.float32, copy=False)
    if scores.size and (not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1):
        raise InputError(str(path), "'scores' must be finite and within 0..1", record)
    if len(set(ids.tolist())) != len(ids):
        raise InputError(str(path), "'category_ids' repeats a category", record)
    out = {}
    for cid, plane in zip(ids.tolist(), scores):
        if plane.shape != (height, width):
            plane = cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)
        out[int(cid)] = np.ascontiguousarray(plane, dtype=np.float32)
    return out
