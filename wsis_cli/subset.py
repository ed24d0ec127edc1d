"""Subsets of a dataset: chosen image ids, K random images, or the complement of either."""

from __future__ import annotations

import numpy as np

from wsis_cli.coco import Dataset, compress_masks
from wsis_cli.errors import InputError, WsisError

__all__ = ["subset_dataset"]


def subset_dataset(ds: Dataset, *, ids: list[int] | None = None, n: int | None = None, complement: bool = False,
                   seed: int = 0, ids_source: str = "--ids") -> Dataset:
    """The images ``ids`` of ``ds`` (or ``n`` drawn at random for ``seed``; every other image with
    ``complement``) with their annotations, masks as compressed RLE. An id that is not in ``ds``
    is an :class:`InputError` naming ``ids_source``, the file or option the ids came from."""
    if (ids is None) == (n is None):
        raise WsisError("give exactly one of ids or n")
    if ids is not None:
        unknown = [i for i in ids if i not in ds.image_by_id]
        if unknown:
            raise InputError(ids_source, f"image id {unknown[0]} is not in {ds.path}"
                             + (f" ({len(unknown)} such ids)" if len(unknown) > 1 else ""))
        chosen = ids
    else:
        if n > len(ds.images):
            raise WsisError(f"{ds.path}: asked for {n} images but it has {len(ds.images)}")
        all_ids = sorted(ds.image_by_id)
        chosen = [all_ids[i] for i in np.random.default_rng(seed).permutation(len(all_ids))[:n]]
    keep = set(chosen)
    if complement:
        keep = set(ds.image_by_id) - keep
    out = ds.subset(keep)
    compress_masks(out)
    return out
