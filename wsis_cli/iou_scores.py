"""Per-instance and per-image mask IoU scores: the oracle, the scores file, and how well a
prediction of them does.

- :func:`oracle_scores`: the real IoU of every predicted (or pseudo-label) mask with the
  ground truth, matched one-to-one per image and class, and each image's score, the mean
  over its instances (Eq. 2 of the mask-guided sample selection paper).
- :func:`parse_iou_scores`: a scores file, validated, as :class:`IouScores`.
- :func:`compare_scores`: the mean absolute error of predicted scores against the oracle,
  per image (the paper's Table 2 metric) and per instance, beside the error of always
  predicting the mean.

A scores file (what ``wsis score-iou`` writes and ``wsis select`` reads)::

    {"info": {"wsis": {...}},
     "images": [{"image_id": 7, "score": 0.62,
                 "instances": [{"annotation_id": 31, "iou": 0.81}, {"annotation_id": 32, "iou": 0.43}]},
                {"image_id": 8, "score": null, "instances": []}]}

Instances are named by ``annotation_id`` when the masks came from a dataset, by ``index``
(0-based position in the list) when they came from a COCO results list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from wsis_cli.coco import Dataset, ann_record, has_segmentation, is_id, rle_to_mask
from wsis_cli.errors import InputError, WsisError
from wsis_cli.selection import ImageScores, parse_scores

__all__ = ["INSTANCE_KEYS", "IouScores", "match_ious", "oracle_scores", "parse_iou_scores", "compare_scores"]

INSTANCE_KEYS = ("annotation_id", "index")
DECIMALS = 6


def match_ious(iou: np.ndarray) -> np.ndarray:
    """Each prediction's IoU (N,) under the one-to-one matching of predictions (rows) to
    ground-truth instances (columns) of ``iou`` (N, M) that maximises the total IoU
    (Hungarian algorithm); unmatched predictions get 0."""
    from scipy.optimize import linear_sum_assignment

    iou = np.asarray(iou, dtype=np.float64)
    out = np.zeros(iou.shape[0], dtype=np.float64)
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        out[rows] = iou[rows, cols]
    return out


def oracle_scores(gt: Dataset, preds: list[dict] | Dataset, *, path: str = "<predictions>",
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """The real mask IoU of each prediction and each image's mean: ``{"images": [...]}``.

    ``preds`` is a COCO results list (instances named by ``index``) or a dataset of
    pseudo-labels (named by ``annotation_id``; its crowd annotations are not instances and are
    skipped). Every prediction needs a mask of its image's size, on an image and a category of
    ``gt``; ``path`` names the predictions in errors. Within each image and class, predictions
    are matched one-to-one to the non-crowd ground-truth instances so as to maximise the total
    IoU; an unmatched prediction scores 0, crowd regions are matched by nothing. Every
    non-crowd ground-truth instance of a scored image needs a mask.

    The images listed are the dataset's own for a dataset, all of ``gt``'s for a results
    list, in file order; an image without predictions has ``score`` None and no instances.
    IoUs and scores are rounded to 6 decimals. ``progress(done, total)`` is called per image.
    """
    from wsis_cli.metrics.coco_eval import normalise_predictions
    from wsis_cli.metrics.iou import mask_iou

    if isinstance(preds, Dataset):
        preds = replace(preds, annotations=[a for a in preds.annotations if not a["iscrowd"]])
        items = [(ann_record(a), a) for a in preds.annotations]
        keys = [("annotation_id", a["id"]) for a in preds.annotations]
    else:
        items = [(f"result {i} (image {r['image_id']})", r) for i, r in enumerate(preds)]
        keys = [("index", i) for i in range(len(preds))]
    for name, r in items:
        if not has_segmentation(r):
            raise InputError(path, "has no segmentation; score-iou needs predicted masks", name)
    records, _ = normalise_predictions(gt, preds, path=path)  # ids and mask sizes checked against gt

    images = preds.images if isinstance(preds, Dataset) else gt.images
    by_image: dict[int, list[int]] = {im["id"]: [] for im in images}
    for i, r in enumerate(records):
        by_image[r["image_id"]].append(i)

    out = []
    for done, im in enumerate(images, start=1):
        idx = by_image[im["id"]]
        gts = [a for a in gt.anns_by_image.get(im["id"], []) if not a["iscrowd"]]
        for a in gts:
            if not has_segmentation(a):
                raise InputError(gt.path, "has no mask; --gt needs fully annotated ground truth (masks)",
                                 ann_record(a))
        ious = np.zeros(len(idx), dtype=np.float64)
        for cat in sorted({records[i]["category_id"] for i in idx}):
            rows = [k for k, i in enumerate(idx) if records[i]["category_id"] == cat]
            cat_gts = [a for a in gts if a["category_id"] == cat]
            if not cat_gts:
                continue
            p = np.stack([rle_to_mask(records[idx[k]]["rle"]) for k in rows])
            g = np.stack([rle_to_mask(gt.rle(a)) for a in cat_gts])
            ious[rows] = match_ious(mask_iou(p, g))
        out.append({
            "image_id": im["id"],
            "score": round(float(ious.mean()), DECIMALS) if idx else None,
            "instances": [{keys[i][0]: keys[i][1], "iou": round(float(v), DECIMALS)} for i, v in zip(idx, ious)],
        })
        if progress is not None:
            progress(done, len(images))
    return {"images": out}


@dataclass(frozen=True)
class IouScores:
    """A validated scores file.

    ``images``: per-image scores (NaN: none). ``instances``: ``(key, id) -> (image_id, iou)``
    with ``key`` one of :data:`INSTANCE_KEYS`. ``path`` names the file in messages.
    """

    images: ImageScores
    instances: dict[tuple[str, int], tuple[int, float]]
    path: str = "<memory>"


def parse_iou_scores(obj, *, path: str = "<memory>") -> IouScores:
    """Validate a scores file (see the module docstring); faults raise :class:`InputError`
    naming ``path`` and the record. ``instances`` may be absent (image scores only); an
    instance has one ``annotation_id`` (any integer) or ``index`` (>= 0), not both, one key
    per file, each id at most once, and a finite ``iou``."""
    images = parse_scores(obj, path=path)  # checks the image records
    instances: dict[tuple[str, int], tuple[int, float]] = {}
    kinds: set[str] = set()
    for rec in obj["images"]:
        iid = rec["image_id"]
        inst = rec.get("instances", [])
        if not isinstance(inst, list):
            raise InputError(path, "'instances' must be a list", f"image {iid}")
        for j, r in enumerate(inst):
            name = f"image {iid}, instances[{j}]"
            if not isinstance(r, dict):
                raise InputError(path, "must be an object", name)
            present = [k for k in INSTANCE_KEYS if k in r]
            if len(present) != 1:
                raise InputError(path, "needs exactly one of 'annotation_id' or 'index'", name)
            kind = present[0]
            v = r[kind]
            if not is_id(v) or (kind == "index" and v < 0):
                raise InputError(path, f"'{kind}' must be {'an' if kind != 'index' else 'a non-negative'} integer",
                                 name)
            name = f"image {iid}, {kind.replace('_', ' ')} {v}"
            kinds.add(kind)
            if len(kinds) > 1:
                raise InputError(path, "instances must all carry 'annotation_id' or all 'index', not a mix", name)
            iou = r.get("iou")
            if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not math.isfinite(iou):
                raise InputError(path, "'iou' must be a finite number", name)
            if (kind, v) in instances:
                raise InputError(path, f"duplicate {kind.replace('_', ' ')}", name)
            instances[(kind, v)] = (iid, float(iou))
    return IouScores(images=images, instances=instances, path=path)


def compare_scores(predicted: IouScores, oracle: IouScores) -> dict:
    """How far ``predicted`` scores are from the ``oracle``'s, as mean absolute errors.

    - ``n_images``, ``mae_image``: over the images that both score (not null), |predicted −
      oracle| image score averaged (the paper's Table 2 metric).
    - ``mae_mean_baseline``: the same images, the error of always predicting the oracle's mean
      image score over them; a useful predictor does better.
    - ``n_instances``, ``mae_instance``: over the instances both files name (same key and id).

    A MAE is None where nothing is compared. Files with no image in common, or an instance
    placed in different images by the two files, describe different predictions:
    :class:`WsisError`.
    """
    o_score = dict(zip(oracle.images.image_ids.tolist(), oracle.images.scores.tolist()))
    if not set(o_score) & set(predicted.images.image_ids.tolist()):
        raise WsisError(f"{predicted.path}: has no image in common with {oracle.path}; they score different "
                        "image sets")
    pairs = [(s, o_score[i]) for i, s in zip(predicted.images.image_ids.tolist(), predicted.images.scores.tolist())
             if i in o_score and not math.isnan(s) and not math.isnan(o_score[i])]
    p = np.array([a for a, _ in pairs], dtype=np.float64)
    o = np.array([b for _, b in pairs], dtype=np.float64)

    diffs = []
    for key, (iid, iou) in predicted.instances.items():
        if key in oracle.instances:
            o_iid, o_iou = oracle.instances[key]
            if o_iid != iid:
                raise WsisError(f"{predicted.path}: {key[0].replace('_', ' ')} {key[1]} is in image {iid} but in "
                                f"image {o_iid} in {oracle.path}: the two files score different predictions")
            diffs.append(abs(iou - o_iou))

    def mae(x: np.ndarray) -> float | None:
        return float(np.abs(x).mean()) if x.size else None

    return {
        "n_images": int(p.size),
        "mae_image": mae(p - o),
        "mae_mean_baseline": mae(o - o.mean()) if o.size else None,
        "n_instances": len(diffs),
        "mae_instance": mae(np.asarray(diffs, dtype=np.float64)),
    }
