"""Instance segmentation metrics on top of COCOeval (faster-coco-eval, else pycocotools).

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

Engines (:data:`ENGINES`): ``faster-coco-eval`` (COCOeval with a C++ core) when it imports,
else ``pycocotools``, the reference: both give the same numbers (the tests check it on COCO
data), the first in about a third of the time.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Callable

import numpy as np

from wsis_cli.boxes import SMALL_AREA
from wsis_cli.coco import Dataset, _check_segmentation, ann_record, has_segmentation, segm_to_rle
from wsis_cli.errors import InputError, WsisError

__all__ = ["evaluate", "normalise_predictions", "default_engine", "ENGINES", "SMALL_AREA", "STANDARD_IOU_THRS"]

STANDARD_IOU_THRS = np.round(np.linspace(0.5, 0.95, 10), 2)
ENGINES = ("faster-coco-eval", "pycocotools")


def default_engine() -> str:
    """``faster-coco-eval`` when it imports, else ``pycocotools``."""
    try:
        _import_faster()
    except ImportError:
        return "pycocotools"
    return "faster-coco-eval"


def _import_faster():
    """faster-coco-eval's COCO and COCOeval classes. Its mask module imports OpenCV for
    an optional boundary mode that wsis never uses; when OpenCV is not loaded yet, the import
    is kept from loading it (a quarter of faster-coco-eval's import time)."""
    import sys

    if "faster_coco_eval" not in sys.modules and "cv2" not in sys.modules:
        sys.modules["cv2"] = None  # makes `import cv2` raise ImportError, which it handles
        try:
            import faster_coco_eval  # noqa: F401
        finally:
            del sys.modules["cv2"]
    import faster_coco_eval  # noqa: F401  (ImportError when it is absent)
    from faster_coco_eval.core.coco import COCO
    from faster_coco_eval.core.faster_eval_api import COCOeval_faster

    return COCO, COCOeval_faster


# ----------------------------------------------------------------------------- predictions
_MAX_DIGITS = 8  # characters of one number in a compressed RLE string (5 bits each) this pass decodes
_MAX_NUMBERS = 2**22  # numbers in one string: 2**22 of 40 bits keep every sum within int64


def _rle_strings_ok(counts: list[str], sizes: list[int]) -> np.ndarray:
    """For each compressed RLE ``counts`` string, whether it decodes into non-negative runs that
    sum to its ``size`` (height * width): :func:`wsis_cli.coco.rle_string_counts` and the checks
    ``_check_segmentation`` makes on its result, for all the strings in one vectorised pass.
    False only says "check it the exact way": a string this pass does not decode (a non-ASCII
    character, a number of more than 8 characters, more than 4M runs) is False too."""
    n = len(counts)
    if n == 0:
        return np.ones(0, dtype=bool)
    ok = np.fromiter(map(str.isascii, counts), dtype=bool, count=n)
    if not ok.all():  # a stand-in: a non-ASCII string is no compressed RLE
        counts = [s if a else "!" for s, a in zip(counts, ok.tolist())]
    lens = np.fromiter(map(len, counts), dtype=np.int64, count=n)
    b = np.frombuffer("".join(counts).encode("ascii"), dtype=np.uint8)
    last = np.cumsum(lens) - 1  # each string's last character
    bad = (b < 48) | (b >= 112)
    if bad.any():
        ok &= ~np.logical_or.reduceat(bad, last - lens + 1)
    c = b - np.uint8(48)  # 6 bits: 5 of value, 0x20 = "more characters follow"
    end = c < 32  # the last character of a number
    ok &= end[last]  # a string may not end inside a number
    end[last] = True  # so that no number runs across strings
    stops = np.flatnonzero(end)
    per_str = np.diff(np.searchsorted(stops, last, side="right"), prepend=0)  # numbers in each string
    first = np.cumsum(per_str) - per_str  # each string's first number
    ok &= per_str <= _MAX_NUMBERS
    starts = np.empty_like(stops)
    starts[0], starts[1:] = 0, stops[:-1] + 1
    digits = stops - starts + 1
    if (digits > _MAX_DIGITS).any():
        ok &= ~np.logical_or.reduceat(digits > _MAX_DIGITS, first)
    # a number: 5-bit digits, least significant first; the last one's top bit is the sign
    x = (c[stops] & np.uint8(31) ^ np.uint8(16)).astype(np.int64) - 16
    multi = np.flatnonzero((digits > 1) & (digits <= _MAX_DIGITS))
    if multi.size:
        st, dg = starts[multi], digits[multi]
        v = x[multi] << (5 * (dg - 1))
        for k in range(int(dg.max()) - 1):
            more = dg - 1 > k
            v[more] += (c[st[more] + k] & np.uint8(31)).astype(np.int64) << (5 * k)
        x[multi] = v
    # run m of a string is x[m] + run m - 2, from m = 3 on: running sums over every other
    # number (odd m; even m from 2), taken as running sums over every other array place
    y = x.copy()
    y[first] = 0
    sums = np.empty_like(y)
    sums[0::2], sums[1::2] = np.cumsum(y[0::2]), np.cumsum(y[1::2])
    # what precedes each string in the running sum of its same-place and other-place numbers
    prev1 = np.where(first >= 1, sums[np.maximum(first - 1, 0)], 0)
    prev2 = np.where(first >= 2, sums[np.maximum(first - 2, 0)], 0)
    odd_m = ((np.arange(len(x)) - np.repeat(first, per_str)) & 1).astype(bool)
    runs = sums - np.where(odd_m, np.repeat(prev1, per_str), np.repeat(prev2, per_str))
    runs[first] = x[first]
    if (runs < 0).any():
        ok &= ~np.logical_or.reduceat(runs < 0, first)
    ok &= np.add.reduceat(runs, first) == np.asarray(sizes, dtype=np.int64)
    return ok


def _fast_checked(gt: Dataset, items: list[tuple]) -> list[bool]:
    """Which predictions carry a compressed RLE of their image's size that decodes: these need
    no ``_check_segmentation``. Anything else (polygons, uncompressed RLE, faults) gets it."""
    picked, counts, sizes = [], [], []
    for i, (_, r, _) in enumerate(items):
        s, im = r.get("segmentation"), gt.image_by_id.get(r.get("image_id"))
        if type(s) is not dict or im is None:
            continue
        size, cnt = s.get("size"), s.get("counts")
        h, w = im["height"], im["width"]
        if (type(cnt) is str and cnt and type(size) is list and len(size) == 2
                and type(size[0]) is int and type(size[1]) is int and size[0] == h and size[1] == w):
            picked.append(i)
            counts.append(cnt)
            sizes.append(h * w)
    fast = [False] * len(items)
    for i, good in zip(picked, _rle_strings_ok(counts, sizes).tolist()):
        fast[i] = good
    return fast


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
        items = [(None, r, r["score"]) for r in preds]

    def name_of(i: int) -> str:  # made only for an error: most runs never need one
        return items[i][0] or f"result {i} (image {items[i][1]['image_id']})"

    with_mask = sum(has_segmentation(r) for _, r, _ in items)
    if with_mask and with_mask != len(items):
        i = next(i for i, (_, r, _) in enumerate(items) if not has_segmentation(r))
        raise InputError(path, "has no segmentation while other predictions do; "
                               "predictions must be all masks or all boxes", name_of(i))
    iou_type = "segm" if with_mask or not items else "bbox"
    fast = _fast_checked(gt, items) if iou_type == "segm" else []

    out = []
    images, categories = gt.image_by_id, gt.category_by_id
    for i, (_, r, score) in enumerate(items):
        im = images.get(r["image_id"])
        if im is None:
            raise InputError(path, "'image_id' names no image of the ground truth", name_of(i))
        if r["category_id"] not in categories:
            raise InputError(path, f"'category_id' {r['category_id']} names no category of the ground truth",
                             name_of(i))
        rec: dict[str, Any] = {"image_id": r["image_id"], "category_id": r["category_id"], "score": float(score)}
        if iou_type == "segm":
            segm = r["segmentation"]
            if fast[i]:
                rec["rle"] = {"size": [im["height"], im["width"]], "counts": segm["counts"].encode("ascii")}
            else:
                def fail(msg: str, i=i):
                    raise InputError(path, msg, name_of(i))

                _check_segmentation(segm, im["height"], im["width"], fail)
                try:
                    rec["rle"] = segm_to_rle(segm, im["height"], im["width"])
                except (ValueError, TypeError) as e:
                    fail(f"segmentation does not decode: {e}")
        else:
            if r.get("bbox") is None:
                raise InputError(path, "has neither a segmentation nor a bbox", name_of(i))
            rec["bbox"] = [float(v) for v in r["bbox"]]
        out.append(rec)
    return out, iou_type


# ----------------------------------------------------------------------------- COCOeval input
def _gt_anns(gt: Dataset, iou_type: str, mask_utils) -> list[dict]:
    """The ground truth as COCOeval reads it, ids renumbered 1..N in file order (both engines
    take a ground-truth id of 0 for "unmatched"; the numbers are never shown)."""
    anns = []
    for i, a in enumerate(gt.annotations, start=1):
        a2 = {k: a[k] for k in ("image_id", "category_id", "iscrowd", "area", "bbox") if k in a}
        a2["id"] = i
        level_ok = has_segmentation(a) if iou_type == "segm" else (a.get("bbox") is not None or has_segmentation(a))
        if not level_ok:
            raise InputError(gt.path, "has no mask; mask evaluation needs fully annotated ground truth"
                             if iou_type == "segm" else "has neither a bbox nor a mask", ann_record(a))
        rle = gt.rle(a) if has_segmentation(a) else None
        if rle is not None:
            a2["segmentation"] = rle
            if "area" not in a2:
                a2["area"] = float(mask_utils.area(rle))
            if "bbox" not in a2:
                a2["bbox"] = mask_utils.toBbox(rle).tolist()
        elif "area" not in a2:
            a2["area"] = float(a["bbox"][2] * a["bbox"][3])
        anns.append(a2)
    return anns


def _mask_areas(rles: list[dict], mask_utils) -> list[float]:
    """Pixel counts of compressed RLEs, 255 to a call (pycocotools 2.0.11 with numpy 2 fails on
    a list of 256 or more)."""
    out: list[float] = []
    for i in range(0, len(rles), 255):
        out.extend(float(v) for v in np.asarray(mask_utils.area(rles[i:i + 255])).tolist())
    return out


def _dt_anns(preds: list[dict], iou_type: str, mask_utils) -> list[dict]:
    """The predictions as COCOeval reads them: ids 1..N, areas (mask pixels or box w*h). Masks
    get no bbox: neither engine reads it for mask evaluation."""
    anns = []
    areas = _mask_areas([p["rle"] for p in preds], mask_utils) if iou_type == "segm" else []
    for i, p in enumerate(preds, start=1):
        a = {"id": i, "image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"], "iscrowd": 0}
        if iou_type == "segm":
            a["segmentation"] = p["rle"]
            a["area"] = areas[i - 1]
        else:
            x, y, w, h = p["bbox"]
            a["bbox"] = p["bbox"]
            a["area"] = w * h
        anns.append(a)
    return anns


def _silent(*args, **kwargs) -> None:
    pass


def _precision(engine: str, gt: Dataset, gt_anns: list[dict], dt_anns: list[dict], iou_type: str,
               thrs: np.ndarray, cat_ids: list[int]) -> np.ndarray:
    """COCOeval's ``precision`` [T, R, K, A, M] (-1 where a category has no ground truth) for
    IoU thresholds ``thrs``, categories ``cat_ids``, areas all / small / large, 100 detections."""
    if engine == "faster-coco-eval":
        COCO, COCOeval = _import_faster()
        # one thread: IoUs in a pool of threads are slower on 2 cores than in a loop
        options: dict[str, Any] = {"print_function": _silent, "rle_iou_max_workers": 1}
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        options = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
        cocos = []
        for anns in (gt_anns, dt_anns):
            c = COCO()
            c.dataset = {"images": gt.images, "categories": gt.categories, "annotations": anns}
            c.createIndex()
            cocos.append(c)
        ev = COCOeval(cocos[0], cocos[1], iou_type, **options)
        p = ev.params
        p.imgIds = sorted(gt.image_by_id)
        p.catIds = list(cat_ids)
        p.iouThrs = thrs
        p.areaRng = [[0.0, 1e10], [0.0, float(np.nextafter(SMALL_AREA, 0))], [float(SMALL_AREA), 1e10]]
        p.areaRngLbl = ["all", "small", "large"]
        p.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    return np.asarray(ev.eval["precision"])


def _mean_valid(x: np.ndarray) -> float | None:
    v = x[x > -1]
    return float(v.mean()) if v.size else None


def _abo(gt_anns: list[dict], dt_anns: list[dict], mask_utils) -> float | None:
    """Mean over non-crowd GT of the best mask IoU with any detection of the same image."""
    gts_of: dict[int, list] = {}
    dts_of: dict[int, list] = {}
    for a in gt_anns:
        if not a["iscrowd"]:
            gts_of.setdefault(a["image_id"], []).append(a["segmentation"])
    if not gts_of:
        return None
    for d in dt_anns:
        dts_of.setdefault(d["image_id"], []).append(d["segmentation"])
    total, count = 0.0, 0
    for img_id, gts in gts_of.items():
        count += len(gts)
        dts = dts_of.get(img_id)
        if dts:
            ious = np.asarray(mask_utils.iou(dts, gts, [0] * len(gts))).reshape(len(dts), len(gts))
            total += float(ious.max(axis=0).sum())
    return total / count


def evaluate(gt: Dataset, preds: list[dict] | Dataset, *, iou_thrs=(0.25, 0.5, 0.75),
             per_class: bool = False, pred_path: str = "<predictions>", engine: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Score predictions against ``gt``; see the module docstring for the keys.

    ``engine``: one of :data:`ENGINES`; None takes :func:`default_engine`. ``progress(done, 4)``
    after each stage: predictions checked, masks encoded, matched and accumulated, ABO.
    """
    step = progress or (lambda done, total: None)
    if engine is None:
        engine = default_engine()
    elif engine not in ENGINES:
        raise WsisError(f"unknown evaluation engine {engine!r}; choose from {', '.join(ENGINES)}")
    records, iou_type = normalise_predictions(gt, preds, path=pred_path)
    user_thrs = list(dict.fromkeys(float(t) for t in iou_thrs))
    for t in user_thrs:
        if not 0.0 < t <= 1.0:  # also rejects NaN
            raise WsisError(f"IoU threshold {t} is not in (0, 1]")
    thrs = np.array(sorted(set(user_thrs) | set(STANDARD_IOU_THRS.tolist())))

    from pycocotools import mask as mask_utils  # its IoUs are faster than faster-coco-eval's

    step(1, 4)
    gt_anns = _gt_anns(gt, iou_type, mask_utils)
    dt_anns = _dt_anns(records, iou_type, mask_utils)
    step(2, 4)
    cat_ids = sorted(gt.category_by_id)
    prec = _precision(engine, gt, gt_anns, dt_anns, iou_type, thrs, cat_ids)
    step(3, 4)
    std = np.isin(thrs, STANDARD_IOU_THRS)
    t_index = {float(t): i for i, t in enumerate(thrs)}

    result: dict[str, Any] = {
        "iou_type": iou_type,
        "mAP": {repr(t): _mean_valid(prec[t_index[t], :, :, 0, -1]) for t in user_thrs},
        "AP": _mean_valid(prec[std][:, :, :, 0, -1]),
        "AP_S": _mean_valid(prec[std][:, :, :, 1, -1]),
        "AP_L": _mean_valid(prec[std][:, :, :, 2, -1]),
        "ABO": _abo(gt_anns, dt_anns, mask_utils) if iou_type == "segm" else None,
        "per_class": None,
        "counts": {"images": len(gt.images), "gt_instances": sum(1 for a in gt.annotations if not a["iscrowd"]),
                   "gt_crowd": sum(1 for a in gt.annotations if a["iscrowd"]), "predictions": len(records)},
    }
    if per_class:
        i50 = t_index[0.5]
        n_gt = {c: 0 for c in cat_ids}
        for a in gt.annotations:
            if not a["iscrowd"]:
                n_gt[a["category_id"]] += 1
        result["per_class"] = [
            {"category_id": c, "name": gt.category_by_id[c]["name"], "gt_instances": n_gt[c],
             "AP50": _mean_valid(prec[i50, :, k, 0, -1])}
            for k, c in enumerate(cat_ids)
        ]
    step(4, 4)
    return result
