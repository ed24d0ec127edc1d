"""Predictions made from ground truth by controlled damage, for checking and timing metrics."""

from __future__ import annotations

import numpy as np

from wsis_cli.coco import Dataset, mask_to_rle, rle_to_mask

__all__ = ["perturbed_predictions"]


def perturbed_predictions(gt: Dataset, *, seed: int = 0, drop: float = 0.2, relabel: float = 0.15,
                          max_kernel: int = 5) -> list[dict]:
    """A COCO results list from ``gt``: each non-crowd instance is dropped with probability
    ``drop``, else its mask is eroded or dilated by a random 1..``max_kernel`` px square, its
    class is changed with probability ``relabel``, and it gets a uniform random score."""
    import cv2

    rng = np.random.default_rng(seed)
    cats = sorted(gt.category_by_id)
    out = []
    for a in gt.annotations:
        if a["iscrowd"] or rng.random() < drop:
            continue
        m = rle_to_mask(gt.rle(a)).astype(np.uint8)
        k = int(rng.integers(1, max_kernel + 1))
        op = cv2.erode if rng.random() < 0.5 else cv2.dilate
        m2 = op(m, np.ones((k, k), np.uint8))
        if m2.sum() == 0:
            m2 = m
        cat = a["category_id"] if rng.random() >= relabel else int(rng.choice(cats))
        out.append({"image_id": a["image_id"], "category_id": cat, "segmentation": mask_to_rle(m2.astype(bool)),
                    "score": float(rng.random())})
    return out
