"""Instance segmentation metrics on top of pycocotools' COCOeval.

- ``mAP``: mAP^r at each requested IoU threshold (area all, 100 detections per image) —
  the metric of the weakly supervised instance segmentation papers.
- ``AP``: COCO AP averaged over IoU 0.50:0.05:0.95.
- ``AP_S`` / ``AP_L``: the same over objects below / at or above 64×64 = 4096 px (the hybrid
  paper's split; pycocotools area ranges [0, 4096) and [4096, ∞) on the areas it uses: the
  ground truth's ``area`` field, the detections' mask areas).
- ``ABO``: average best overlap, the mean over non-crowd ground-truth instances of the best
  mask IoU with any prediction in the same image, whatever its class or score.
- ``per_class``: AP@0.5 of each category.

Predictions with boxes only are scored on boxes (``iou_type: "bbox"``; ABO is then null).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from wsis_cli.boxes import SMALL_AREA
from wsis_cli.coco import Dataset, _check_segmentation, ann_record, has_segmentation, segm_to_rle
from wsis_cli.errors import InputError, WsisError

__all__ = ["evaluate", "normalise_predictions", "SMALL_AREA", "STANDARD_IOU_THRS"]

STANDARD_IOU_THRS = np.round(np.linspace(0.5, 0.95, 10), 2)


def normalise_predictions(gt: Dataset, preds: list[dict] | Dataset, *, path: str) -> tuple[list[dict], str]:
    """Check predictions against the ground truth and bring them to one form.

    ``preds`` is a results list or a dataset (whose annotations score 1.0 unless they carry
    ``score``). Returns ``(records, iou_type)`` where each record has ``image_id``,
    ``category_id``, ``score`` and either ``rle`` (compressed, counts bytes) or ``bbox``.
    """
    if isinstance(preds, Dataset):
        for im in preds.images:
            g = gt.image_by_id.get(im["id"])
            if g is None:
                raise InputError(path, "names no image of the ground truth", f"image {im['id']}")
            if (g["width"], g["height"]) != (im["width"], im["height"]):
                raise InputError(path, f"is {im['width']}x{im['height']} here but "
                                       f"{g['width']}x{g['height']} in the ground truth", f"image {im['id']}")
        items = [(ann_record(a), a, a.get("score", 1.0)) for a in preds.annotations]
    else:
        items = [(f"result {i} (image {r['image_id']})", r, r["score"]) for i, r in enumerate(preds)]

    with_mask = sum(has_segmentation(r) for _, r, _ in items)
    if with_mask and with_mask != len(items):
        rec = next(name for name, r, _ in items if not has_segmentation(r))
        raise InputError(path, "has no segmentation while other predictions do; "
                               "predictions must be all masks or all boxes", rec)
    iou_type = "segm" if with_mask or not items else "bbox"

    out = []
    for name, r, score in items:
        im = gt.image_by_id.get(r["image_id"])
        if im is None:
            raise InputError(path, "'image_id' names no image of the ground truth", name)
        if r["category_id"] not in gt.category_by_id:
            raise InputError(path, f"'category_id' {r['category_id']} names no category of the ground truth", name)
        rec: dict[str, Any] = {"image_id": r["image_id"], "category_id": r["category_id"], "score": float(score)}
        if iou_type == "segm":

            def fail(msg: str, name=name):
                raise InputError(path, msg, name)

            _check_segmentation(r["segmentation"], im["height"], im["width"], fail)
            try:
                rec["rle"] = segm_to_rle(r["segmentation"], im["height"], im["width"])
            except (ValueError, TypeError) as e:
                fail(f"segmentation does not decode: {e}")
        else:
            if r.get("bbox") is None:
                raise InputError(path, "has neither a segmentation nor a bbox", name)
            rec["bbox"] = [float(v) for v in r["bbox"]]
        out.append(rec)
    return out, iou_type


def _gt_coco(gt: Dataset, iou_type: str):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    anns = []
    for a in gt.annotations:
        a2 = {k: a[k] for k in ("id", "image_id", "category_id", "iscrowd", "area", "bbox") if k in a}
        level_ok = has_segmentation(a) if iou_type == "segm" else (a.get("bbox") is not None or has_segmentation(a))
        if not level_ok:
            raise InputError(gt.path, "has no mask; mask evaluation needs fully annotated ground truth"
                             if iou_type == "segm" else "has neither a bbox nor a mask", ann_record(a))
        rle = gt.rle(a) if has_segmentation(a) else None
        if rle is not None:
            a2["segmentation"] = rle
            a2.setdefault("area", float(mask_utils.area(rle)))
            a2.setdefault("bbox", mask_utils.toBbox(rle).tolist())
        else:
            a2.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
        anns.append(a2)
    coco = COCO()
    coco.dataset = {"images": gt.images, "categories": gt.categories, "annotations": anns}
    coco.createIndex()
    return coco


def _dt_coco(gt: Dataset, preds: list[dict], iou_type: str):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    anns = []
    for i, p in enumerate(preds, start=1):
        a = {"id": i, "image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"], "iscrowd": 0}
        if iou_type == "segm":
            a["segmentation"] = p["rle"]
            a["area"] = float(mask_utils.area(p["rle"]))
            a["bbox"] = mask_utils.toBbox(p["rle"]).tolist()
        else:
            x, y, w, h = p["bbox"]
            a["bbox"] = p["bbox"]
            a["area"] = w * h
        anns.append(a)
    coco = COCO()
    coco.dataset = {"images": gt.images, "categories": gt.categories, "annotations": anns}
    coco.createIndex()
    return coco


def _mean_valid(x: np.ndarray) -> float | None:
    v = x[x > -1]
    return float(v.mean()) if v.size else None


def _abo(gt_coco, dt_coco) -> float | None:
    """Mean over non-crowd GT of the best mask IoU with any detection of the same image."""
    from pycocotools import mask as mask_utils

    best: list[float] = []
    for img_id in gt_coco.getImgIds():
        gts = [a for a in gt_coco.imgToAnns.get(img_id, []) if not a["iscrowd"]]
        if not gts:
            continue
        dts = dt_coco.imgToAnns.get(img_id, [])
        if not dts:
            best.extend([0.0] * len(gts))
            continue
        ious = mask_utils.iou([d["segmentation"] for d in dts], [g["segmentation"] for g in gts], [0] * len(gts))
        best.extend(np.asarray(ious).reshape(len(dts), len(gts)).max(axis=0).tolist())
    return float(np.mean(best)) if best else None


def evaluate(gt: Dataset, preds: list[dict] | Dataset, *, iou_thrs=(0.25, 0.5, 0.75),
             per_class: bool = False, pred_path: str = "<predictions>") -> dict:
    """Score predictions against ``gt``; see the module docstring for the keys."""
    from pycocotools.cocoeval import COCOeval

    records, iou_type = normalise_predictions(gt, preds, path=pred_path)
    user_thrs = list(dict.fromkeys(float(t) for t in iou_thrs))
    for t in user_thrs:
        if not 0.0 < t <= 1.0:  # also rejects NaN
            raise WsisError(f"IoU threshold {t} is not in (0, 1]")
    thrs = np.array(sorted(set(user_thrs) | set(STANDARD_IOU_THRS.tolist())))

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt_coco = _gt_coco(gt, iou_type)
        dt_coco = _dt_coco(gt, records, iou_type)
        ev = COCOeval(gt_coco, dt_coco, iou_type)
        p = ev.params
        p.iouThrs = thrs
        p.areaRng = [[0.0, 1e10], [0.0, float(np.nextafter(SMALL_AREA, 0))], [float(SMALL_AREA), 1e10]]
        p.areaRngLbl = ["all", "small", "large"]
        p.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # [T, R, K, A, M]; -1 where a category has no ground truth
    std = np.isin(thrs, STANDARD_IOU_THRS)
    t_index = {float(t): i for i, t in enumerate(thrs)}

    result: dict[str, Any] = {
        "iou_type": iou_type,
        "mAP": {repr(t): _mean_valid(prec[t_index[t], :, :, 0, -1]) for t in user_thrs},
        "AP": _mean_valid(prec[std][:, :, :, 0, -1]),
        "AP_S": _mean_valid(prec[std][:, :, :, 1, -1]),
        "AP_L": _mean_valid(prec[std][:, :, :, 2, -1]),
        "ABO": _abo(gt_coco, dt_coco) if iou_type == "segm" else None,
        "per_class": None,
        "counts": {"images": len(gt.images), "gt_instances": sum(1 for a in gt.annotations if not a["iscrowd"]),
                   "gt_crowd": sum(1 for a in gt.annotations if a["iscrowd"]), "predictions": len(records)},
    }
    if per_class:
        i50 = t_index[0.5]
        n_gt = {c: 0 for c in p.catIds}
        for a in gt.annotations:
            if not a["iscrowd"]:
                n_gt[a["category_id"]] += 1
        result["per_class"] = [
            {"category_id": c, "name": gt.category_by_id[c]["name"], "gt_instances": n_gt[c],
             "AP50": _mean_valid(prec[i50, :, k, 0, -1])}
            for k, c in enumerate(p.catIds)
        ]
    return result
