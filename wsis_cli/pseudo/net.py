"""Pseudo-labels from a trained mask model (``wsis pseudolabel net``): BASIS's *annotation network*.

A model trained on the few fully annotated images predicts instances on the weakly labelled
ones; the weak labels, ground truth about what the image holds, choose among its predictions.
Each annotation is handled by its supervision level (:func:`wsis_cli.coco.supervision_level`), so
one image may mix levels:

========  ===================================================================================
``full``  kept as it is (already strong)
``box``   the mask the model predicts inside the box (``masks_in_boxes``); the box is kept
``ilc``   class ``c`` with count ``k``: the ``k`` best distinct detections of class ``c``, ranked
          by score (``rank="score"``) or by predicted mask IoU (``rank="iou"``); fewer if fewer
          were found
``il``    class ``c``, count unknown: the distinct detections of class ``c`` with score >= ``score_thr``
========  ===================================================================================

*Distinct*: going down the ranking, a detection is passed over when more than
:data:`PART_OVERLAP` of its mask or of a chosen one's (the smaller) lies in the other: a part of an
object the model also found whole, or the same object twice, is not another instance. (A
detector at 200 steps fills a count of 3 with a disc and two of its halves; the box NMS inside
the model lets them through, their boxes overlapping by less than 0.5.)

Detections of classes with no image-level label in the image are dropped. Where an image also
has box or full annotations of a class with image-level labels, detections whose box overlaps
one of them (box IoU >= ``DUPLICATE_IOU``) are not chosen for the image-level labels: those
instances are labelled already (the count of an ``ilc`` label counts only its own instances).
Crowd annotations with a box or a mask are copied as they are (regions, not instances).

Every output annotation carries ``score`` (the model's; full annotations: none), ``iou`` (the
predicted mask IoU, when the model has an IoU head) and ``"wsis": {"method": "net", "source":
"full"|"box"|"ilc"|"il", "ann_id": ...}`` (``ann_id``: the weak annotation it comes from, for
``full`` and ``box``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from wsis_cli.boxes import box_iou, mask_to_box, xywh_to_xyxy
from wsis_cli.coco import (Dataset, has_segmentation, labels_of, provenance, rle_to_mask, segm_to_rle,
                           supervision_level)
from wsis_cli.detections import Detections
from wsis_cli.errors import WsisError
from wsis_cli.pseudo.labels import Instance, PseudoLabels, to_record

__all__ = ["RANKS", "DUPLICATE_IOU", "PART_OVERLAP", "MasksInBoxes", "image_pseudo_labels", "pseudo_instances", "pseudolabel_net",
           "pseudolabel_with_model", "predicted_scores", "needs_detections", "summary_line"]

RANKS = ("score", "iou")
DUPLICATE_IOU = 0.5
PART_OVERLAP = 0.5  # intersection over the smaller mask above which two detections are one object

MasksInBoxes = Callable[[np.ndarray, np.ndarray], Detections]
"""``(boxes (N, 4) float x1, y1, x2, y2, category_ids (N,) int) -> Detections``: one row per box,
in order, with ``masks`` (and ``scores``, maybe ``ious``)."""


def _image_level(a: dict) -> bool:
    return supervision_level(a) in ("ilc", "il")


def _box_label(a: dict) -> bool:
    return supervision_level(a) == "box" and not a.get("iscrowd")


def needs_detections(anns: list[dict]) -> bool:
    """Whether an image's annotations hold an image-level label (``ilc`` or ``il``), the only
    kind that needs the model's detections."""
    return any(_image_level(a) for a in anns)


def _instance(image_id: int, category_id: int, mask: np.ndarray, box_xyxy, score, iou, wsis: dict) -> Instance:
    """A new instance (id 0 until numbered) from a mask; ``box_xyxy`` is its box (None: the mask's own)."""
    if box_xyxy is None:
        box_xyxy = mask_to_box(mask)
    return Instance.from_mask(mask, id=0, image_id=int(image_id), category_id=int(category_id),
                              box=np.asarray(box_xyxy, np.float64), score=float(score),
                              iou=None if iou is None else float(iou), method="net", wsis=wsis, fields={"iscrowd": 0})


def _kept(a: dict) -> Instance:
    """A full annotation (or a crowd region) as it is, its provenance added."""
    fields = {k: v for k, v in a.items() if k not in ("id", "wsis")}
    fields["wsis"] = {"method": "net", "source": supervision_level(a), "ann_id": a.get("id")}
    box = xywh_to_xyxy(a["bbox"])[0] if a.get("bbox") is not None else None
    return Instance(id=0, image_id=a["image_id"], category_id=a["category_id"], box=box, area=a.get("area"),
                    method="kept", fields=fields)


def _ann_box(a: dict, height: int, width: int) -> np.ndarray | None:
    """An annotation's ``x1, y1, x2, y2`` box: its bbox, else its mask's (None: neither)."""
    if a.get("bbox") is not None:
        return xywh_to_xyxy(a["bbox"])[0]
    if has_segmentation(a):
        return mask_to_box(rle_to_mask(segm_to_rle(a["segmentation"], height, width)))
    return None


def _ranked(det: Detections, index: np.ndarray, rank: str) -> np.ndarray:
    """``index`` (into ``det``) best first: by score, or by predicted IoU (ties: score), then index."""
    if rank == "iou":
        order = np.lexsort((index, -det.scores[index].astype(np.float64), -det.ious[index].astype(np.float64)))
    else:
        order = np.lexsort((index, -det.scores[index].astype(np.float64)))
    return index[order]


def _distinct(det: Detections, ranked: np.ndarray, limit: int | None) -> list[int]:
    """Up to ``limit`` (None: all) of ``ranked`` (indices into ``det``, best first) that are distinct
    objects (see the module docstring)."""
    chosen: list[int] = []
    areas = det.masks.reshape(len(det.masks), -1).sum(axis=1) if len(ranked) else None
    for i in ranked:
        if limit is not None and len(chosen) >= limit:
            break
        if any((det.masks[i] & det.masks[j]).sum() > PART_OVERLAP * max(min(areas[i], areas[j]), 1)
               for j in chosen):
            continue
        chosen.append(int(i))
    return chosen


def pseudo_instances(anns: list[dict], det: Detections | None, **kwargs) -> list[dict]:
    """:func:`image_pseudo_labels` as COCO annotation records without ``id``."""
    return [{k: v for k, v in to_record(r).items() if k != "id"} for r in image_pseudo_labels(anns, det, **kwargs)]


def image_pseudo_labels(anns: list[dict], det: Detections | None, *, masks_in_boxes: MasksInBoxes | None = None,
                        rank: str = "score", score_thr: float = 0.05, stats: dict | None = None) -> list[Instance]:
    """The pseudo instances of one image from its weak annotations ``anns`` (all of one image)
    and the model's detections ``det`` on it (masks needed; None is allowed when no annotation is
    an image-level label, see :func:`needs_detections`).

    ``masks_in_boxes`` (needed when there are box labels) is called once, with all of the image's
    non-crowd box labels. Returns the instances (``id`` 0: not numbered yet): full annotations
    (method ``"kept"``), then box labels (in the order of ``anns``), then the image-level
    instances (class by class in order of first appearance, best first). ``stats``, when given, is updated with ``short_of_count`` (how
    many instances of ``ilc`` counts found no detection), ``il_empty`` (``il`` classes with no
    detection over the threshold) and ``empty_masks`` (instances whose mask is empty).
    """
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {', '.join(RANKS)}, got {rank!r}")
    if not anns:
        return []
    image_id = anns[0]["image_id"]
    if any(a["image_id"] != image_id for a in anns):
        raise ValueError("pseudo_instances takes the annotations of one image")
    stats = {} if stats is None else stats
    for k in ("short_of_count", "il_empty", "empty_masks"):
        stats.setdefault(k, 0)
    # full (and crowd regions with a box or a mask): as they are
    out = [_kept(a) for a in anns if supervision_level(a) == "full" or (supervision_level(a) == "box"
                                                                          and a.get("iscrowd"))]

    # box labels: the model's mask inside each box
    boxed = [a for a in anns if _box_label(a)]
    if boxed:
        if masks_in_boxes is None:
            raise ValueError(f"image {image_id} has box labels: masks_in_boxes is needed")
        boxes = xywh_to_xyxy([a["bbox"] for a in boxed])
        cats = np.array([a["category_id"] for a in boxed], dtype=np.int64)
        got = masks_in_boxes(boxes, cats)
        if len(got) != len(boxed) or got.masks is None:
            raise ValueError(f"masks_in_boxes returned {len(got)} rows{'' if got.masks is not None else ' without masks'}"
                             f" for {len(boxed)} boxes")
        for i, a in enumerate(boxed):
            m = got.masks[i]
            stats["empty_masks"] += not m.any()
            out.append(_instance(image_id, a["category_id"], m, boxes[i], got.scores[i],
                                 None if got.ious is None else got.ious[i],
                                 {"source": "box", "ann_id": a.get("id")}))

    # image-level labels: choose among the detections
    image_level = [a for a in anns if _image_level(a)]
    if not image_level:
        return out
    if det is None:
        raise ValueError(f"image {image_id} has image-level labels: its detections are needed")
    if det.masks is None:
        raise WsisError("the model predicts no masks: pseudolabel net needs a mask model")
    if rank == "iou" and det.ious is None:
        raise WsisError("rank 'iou' needs predicted mask IoUs: the model has no IoU head (use rank 'score')")

    labelled = [a for a in anns if supervision_level(a) in ("full", "box") and not a.get("iscrowd")]
    for cid, count in labels_of(image_level).items():
        idx = np.flatnonzero(det.category_ids == cid)
        taken = [_ann_box(a, det.height, det.width) for a in labelled if a["category_id"] == cid]
        taken = [b for b in taken if b is not None]
        if taken and len(idx):
            idx = idx[box_iou(det.boxes[idx], np.stack(taken)).max(axis=1) < DUPLICATE_IOU]
        if count is None:
            chosen = _distinct(det, _ranked(det, idx[det.scores[idx] >= score_thr], "score"), None)
            stats["il_empty"] += len(chosen) == 0
            source = "il"
        else:
            chosen = _distinct(det, _ranked(det, idx, rank), count)
            stats["short_of_count"] += count - len(chosen)
            source = "ilc"
        for i in chosen:
            m = det.masks[i]
            stats["empty_masks"] += not m.any()
            out.append(_instance(image_id, cid, m, det.boxes[i] if not m.any() else None, det.scores[i],
                                 None if det.ious is None else det.ious[i], {"source": source}))
    return out


def _area(rec: dict, im: dict) -> float | None:
    """A kept record's area when it has none: its mask's pixels, else its box's w*h."""
    if has_segmentation(rec):
        from pycocotools import mask as mask_utils

        return float(mask_utils.area(segm_to_rle(rec["segmentation"], im["height"], im["width"])))
    if rec.get("bbox") is not None:
        return float(rec["bbox"][2] * rec["bbox"][3])
    return None


def _source(r: Instance) -> str:
    return (r.fields["wsis"] if r.method == "kept" else r.wsis)["source"]


def pseudolabel_net(ds: Dataset, images: list[dict], detect: Callable[[dict], Detections],
                    masks_in_boxes_for: Callable[[dict], MasksInBoxes], *, rank: str = "score",
                    score_thr: float = 0.05, min_iou: float | None = None, options: dict | None = None,
                    progress: Callable[[int, int], None] | None = None) -> PseudoLabels:
    """Pseudo-label ``images`` (records of ``ds``, e.g. a shard) with a model.

    ``detect(image record) -> Detections`` runs the model on an image; it is called only for
    images with image-level labels. ``masks_in_boxes_for(image record)`` gives the image's
    :data:`MasksInBoxes`; it is called (and its result used) only for images with box labels.
    Returns training-ready pseudo-labels (``images``, ids 1..N in image order; kept records
    without an ``area`` get one; provenance from :func:`wsis_cli.coco.provenance` with ``rank``,
    ``score_thr`` and ``options``) with a summary: ``images``, ``detected`` (images the model ran
    on), ``instances``, ``by_source``, ``short_of_count`` (instances of counts not found),
    ``images_short`` (images with any), ``il_empty``, ``empty_masks``, ``unlabelled_images``
    (labelled images in which nothing was found: left out of the dataset, since training would
    take them for background), ``low_iou``.

    ``min_iou``: a detected instance whose predicted mask IoU is below it is kept but marked
    ``wsis.valid: false`` (counted in ``low_iou``), so that `train maskrcnn --only-valid` makes it
    an ignore region: its pixels teach neither its (doubtful) mask nor "background".
    """
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {', '.join(RANKS)}, got {rank!r}")
    summary = {"images": len(images), "detected": 0, "instances": 0,
               "by_source": {"full": 0, "box": 0, "ilc": 0, "il": 0},
               "short_of_count": 0, "images_short": 0, "il_empty": 0, "empty_masks": 0, "unlabelled_images": 0,
               "low_iou": 0}
    rows: list[Instance] = []
    kept_images: list[dict] = []
    for n, im in enumerate(images, 1):
        anns = ds.anns_by_image.get(im["id"], [])
        det = None
        if needs_detections(anns):
            det = detect(im)
            summary["detected"] += 1
            if (det.height, det.width) != (im["height"], im["width"]):
                raise WsisError(f"image {im['id']}: the model's detections are {det.width}x{det.height} px, "
                                f"the record says {im['width']}x{im['height']}")
        boxes = masks_in_boxes_for(im) if any(_box_label(a) for a in anns) else None
        stats: dict = {}
        made = image_pseudo_labels(anns, det, masks_in_boxes=boxes, rank=rank, score_thr=score_thr, stats=stats)
        if anns and not made:
            # labelled as holding objects, but nothing found: left out, or training would take it
            # for background
            summary["unlabelled_images"] += 1
        else:
            kept_images.append(im)
        for r in made:
            if min_iou is not None and r.method == "net" and r.iou is not None and r.iou < min_iou:
                r = replace(r, valid=False, wsis={**r.wsis, "valid": False})
                summary["low_iou"] += 1
            area = _area(r.fields, im) if r.method == "kept" and "area" not in r.fields else r.area
            rows.append(replace(r, id=len(rows) + 1, area=area))
            summary["by_source"][_source(r)] += 1
        for k in ("short_of_count", "il_empty", "empty_masks"):
            summary[k] += stats.get(k, 0)
        summary["images_short"] += stats.get("short_of_count", 0) > 0
        if progress:
            progress(n, len(images))
    summary["instances"] = len(rows)
    opts = {"rank": rank, "score_thr": score_thr, **({"min_iou": min_iou} if min_iou is not None else {})}
    prov = provenance("pseudolabel net", {**opts, **(options or {})})
    return PseudoLabels.from_instances(rows, source=ds, images=kept_images, summary=summary, provenance=prov)


def summary_line(summary: dict, images: int) -> str:
    """One line for people: instances by source, short images, labelled images left out."""
    by = ", ".join(f"{k} {v}" for k, v in summary.get("by_source", {}).items() if v)
    line = f"{summary.get('instances')} instances in {images} images ({by})"
    if summary.get("images_short"):
        line += f"; {summary['images_short']} images with fewer detections than their counts"
    if summary.get("low_iou"):
        line += f"; {summary['low_iou']} below --min-iou, marked wsis.valid false (ignore regions under --only-valid)"
    if summary.get("unlabelled_images"):
        line += (f"; {summary['unlabelled_images']} labelled images left out (nothing found in them, and training "
                 "would take them for background)")
    return line


# ----------------------------------------------------------------------------- with a trained model
def pseudolabel_with_model(ds: Dataset, images_dir, predictor, *, rank: str = "score", score_thr: float = 0.05,
                           min_iou: float | None = None, name: str = "the model", options: dict | None = None,
                           progress=None) -> PseudoLabels:
    """:func:`pseudolabel_net` with ``predictor`` (an :class:`~wsis_cli.engine.predictor.Predictor`)
    as the annotation network: it detects on each image and predicts masks in box labels. ``name``
    (the run) names the model in errors."""
    from wsis_cli.images import image_path, read_sized_image

    if not predictor.has_masks:
        raise WsisError(f"{name}: was trained with --boxes-only; pseudo-labels need a mask model")
    if rank == "iou" and not predictor.has_iou_head:
        raise WsisError(f"{name}: has no IoU head (train with --iou-head) to rank by predicted IoU; use --rank score")
    if min_iou is not None and not predictor.has_iou_head:
        raise WsisError(f"{name}: has no IoU head (train with --iou-head); --min-iou needs predicted IoUs")
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

    def run_detect(im: dict) -> Detections:
        return predictor.detect([rgb_of(im)], score_thr=min(score_thr, 0.05))[0]

    def masks_for(im: dict) -> MasksInBoxes:
        return lambda boxes, cats: predictor.masks_in_boxes(rgb_of(im), boxes, cats)

    return pseudolabel_net(ds, ds.images, run_detect, masks_for, rank=rank, score_thr=score_thr, min_iou=min_iou,
                           options=options, progress=progress)


def predicted_scores(predictor, images_dir, *, dataset: Dataset | None = None, score_thr: float = 0.05,
                     batch_size: int = 1, rank: str = "score", name: str = "the model", progress=None) -> dict:
    """The model half of ``score-iou`` (``{"images": [...]}``, without ``info``): each instance's
    IoU as ``predictor``'s IoU head predicts it and each image's score (their mean, the paper's
    Eq. 2). With a dataset holding image-level labels (IL/IL+C) or boxes, the instances are those
    :func:`pseudolabel_with_model` makes, named by the ``annotation_id`` it gives them; otherwise
    every detection scoring at least ``score_thr``, named by its ``index`` in the results list
    ``predict`` writes with the same options. ``name`` (the run) names the model in errors."""
    from wsis_cli.images import folder_images

    if not predictor.has_iou_head:
        raise WsisError(f"{name}: has no IoU head; train it with --iou-head to predict mask IoUs")
    if dataset is not None and any(supervision_level(a) != "full" for a in dataset.annotations):
        pseudo = pseudolabel_with_model(dataset, images_dir, predictor, rank=rank, score_thr=score_thr, name=name,
                                        progress=progress).to_dataset()
        per_image: dict[int, list[dict]] = {im["id"]: [] for im in dataset.images}
        for a in pseudo.annotations:
            if a.get("iou") is not None:
                per_image[a["image_id"]].append({"annotation_id": int(a["id"]), "iou": round(float(a["iou"]), 6)})
    else:
        images = dataset.images if dataset is not None else folder_images(images_dir)
        results = predictor.predict_images(images, images_dir, dataset=dataset, score_thr=score_thr,
                                           batch_size=batch_size, progress=progress)
        per_image = {im["id"]: [] for im in images}
        for index, r in enumerate(results):
            per_image[r["image_id"]].append({"index": index, "iou": round(float(r["iou"]), 6)})
    out = []
    for iid, inst in per_image.items():
        score = round(float(np.mean([r["iou"] for r in inst])), 6) if inst else None
        out.append({"image_id": int(iid), "score": score, "instances": inst})
    return {"images": out}
