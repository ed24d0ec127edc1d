"""``pseudolabel net``'s model half: a trained detector labels a weak pool. Torch is imported only
inside the functions that run a model."""

from __future__ import annotations

import numpy as np

from wsis_cli.coco import Dataset
from wsis_cli.errors import WsisError

__all__ = ["net_pseudolabels"]


def net_pseudolabels(ds: Dataset, images_dir, run, *, device="cpu", rank: str = "score", score_thr: float = 0.05,
                     options: dict | None = None, progress=None, predictor=None) -> tuple[Dataset, dict]:
    """``pseudolabel net``: the annotation network labels the weak images of ``ds`` (see
    :mod:`wsis_cli.pseudo.net` for the rules). ``predictor``: ``run``'s model when the caller
    has loaded it already."""
    from wsis_cli.engine.predictor import Predictor
    from wsis_cli.images import image_path, read_sized_image
    from wsis_cli.pseudo.net import pseudolabel_net

    predictor = predictor if predictor is not None else Predictor.from_run(run, device)
    if not predictor.has_masks:
        raise WsisError(f"{run}: was trained with --boxes-only; pseudo-labels need a mask model")
    if rank == "iou" and not predictor.has_iou_head:
        raise WsisError(f"{run}: has no IoU head (train with --iou-head) to rank by predicted IoU; use --rank score")
    known = set(predictor.config["category_ids"])
    unknown = sorted({a["category_id"] for a in ds.annotations} - known)
    if unknown:
        raise WsisError(f"{ds.path}: categories {unknown} are not among the model's {sorted(known)}")
    cache: dict[int, np.ndarray] = {}

    def rgb_of(im: dict) -> np.ndarray:
        if im["id"] not in cache:
            cache.clear()
            cache[im["id"]] = read_sized_image(image_path(images_dir, im, dataset=ds.path), im, ds.path)
        return cache[im["id"]]

    def run_detect(im: dict):
        return predictor.detect([rgb_of(im)], score_thr=min(score_thr, 0.05))[0]

    def masks_for(im: dict):
        return lambda boxes, cats: predictor.masks_in_boxes(rgb_of(im), boxes, cats)

    labels = pseudolabel_net(ds, ds.images, run_detect, masks_for, rank=rank, score_thr=score_thr, options=options,
                             progress=progress)
    return labels.to_dataset(), labels.summary
