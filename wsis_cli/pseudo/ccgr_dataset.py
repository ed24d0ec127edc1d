"""CCGR over a dataset (``pseudolabel ccgr``): every box annotation refined on its image's class
score map (:mod:`wsis_cli.pseudo.scoremaps`), then cut into a mask.

Images are taken in chunks of at most ``cfg.chunk_pixels`` plane pixels; all boxes of a chunk
are optimised together (:func:`wsis_cli.pseudo.ccgr.refine_boxes`) while two threads read the next
chunk's score maps (each image's file once), so two chunks' planes are in memory at once. Each
annotation keeps its fields and gets the refined ``bbox``, a mask (plane > ``mask_thr`` inside the
box), its ``area`` and ``"wsis": {..., "method": "ccgr", "box_before": [x, y, w, h]}``; crowd
regions are passed through as they are, after the refined boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from wsis_cli.boxes import box_iou, xywh_to_xyxy
from wsis_cli.coco import Dataset, ann_record, provenance
from wsis_cli.errors import InputError
from wsis_cli.pseudo.ccgr import CCGRConfig, crop_masks, refine_boxes, stop_points
from wsis_cli.pseudo.labels import Instance, PseudoLabels, coco_bbox
from wsis_cli.pseudo.scoremaps import map_path, read_score_maps

__all__ = ["pseudolabel_ccgr", "summary_line"]

BBOX_DECIMALS = 2
LAYOUT = ("bbox", "segmentation", "area", "wsis")  # the box record's own fields stay in place


def _boxed(ds: Dataset, warn: Callable[[str], None]) -> list[tuple[dict, list[dict]]]:
    """``(image, its non-crowd annotations)`` for the images that have any, each checked: a point
    must be finite and inside its image; a box with no area inside its image is left out (with a
    warning naming it), one partly outside is clipped to the image."""
    todo = []
    for im in ds.images:
        anns = []
        for a in (a for a in ds.anns_by_image[im["id"]] if not a.get("iscrowd")):
            if a.get("bbox") is None:
                raise InputError(ds.path, "has no bbox to refine", ann_record(a))
            _check_point(ds, im, a)
            x, y, w, h = a["bbox"]
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, im["width"]), min(y + h, im["height"])
            if x2 - x1 < 1 or y2 - y1 < 1:
                warn(f"{ds.path}: {ann_record(a)}: its box {a['bbox']} has no area inside the "
                     f"{im['width']}x{im['height']} image; left out")
                continue
            anns.append({**a, "bbox": [x1, y1, x2 - x1, y2 - y1]} if (x1, y1, x2, y2) != (x, y, x + w, y + h) else a)
        if anns:
            todo.append((im, anns))
    return todo


def _check_point(ds: Dataset, im: dict, a: dict) -> None:
    p = a.get("point")
    if p is None:
        return
    if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in p)):
        raise InputError(ds.path, f"'point' must be [x, y], got {p!r}", ann_record(a))
    if not all(np.isfinite(p)):
        raise InputError(ds.path, f"'point' must be finite, got {p!r}", ann_record(a))
    if not (0 <= p[0] <= im["width"] and 0 <= p[1] <= im["height"]):
        raise InputError(ds.path, f"'point' {p} lies outside its {im['width']}x{im['height']} image",
                         ann_record(a))


def _chunks(todo: list, cfg: CCGRConfig):
    """``(start, stop)`` of each run of ``todo``'s images whose planes (one per class with a box) hold
    at most ``cfg.chunk_pixels`` pixels: an image is taken while one plane of it still fits, and the
    first of a run always."""
    start = 0
    while start < len(todo):
        stop, pixels = start, 0
        while stop < len(todo):
            im, anns = todo[stop]
            if stop > start and pixels + im["height"] * im["width"] > cfg.chunk_pixels:
                break
            pixels += im["height"] * im["width"] * len({a["category_id"] for a in anns})
            stop += 1
        yield start, stop
        start = stop


def _image_planes(ds: Dataset, im: dict, anns: list[dict], maps_dir) -> dict[int, np.ndarray]:
    """``{category id: plane}`` for the classes of the image's boxes, in their order, from its score
    map file (read once)."""
    path = map_path(maps_dir, im)
    record = f"image {im['id']} ({im['file_name']})"
    maps = read_score_maps(path, height=im["height"], width=im["width"], record=record)
    planes = {}
    for a in anns:
        if a["category_id"] not in planes:
            if a["category_id"] not in maps:
                raise InputError(str(path), f"has no plane for category {a['category_id']}, needed by "
                                            f"{ann_record(a)} of {ds.path}", record)
            planes[a["category_id"]] = maps[a["category_id"]]
    return planes


def _read_ahead(ds: Dataset, todo: list, maps_dir, cfg: CCGRConfig):
    """Per chunk of images (:func:`_chunks`): ``(planes, rows)``, ``rows`` = ``(annotation, its plane's
    index)``. The next chunk's files are read on two threads while the caller works on this one; a
    fault in one is raised when the caller reaches its image."""
    from concurrent.futures import ThreadPoolExecutor

    bounds = list(_chunks(todo, cfg))
    pool = ThreadPoolExecutor(2, thread_name_prefix="ccgr-maps")

    def submit(k: int) -> list:
        return [pool.submit(_image_planes, ds, im, anns, maps_dir) for im, anns in todo[slice(*bounds[k])]]

    try:
        reads = submit(0) if bounds else []
        for k in range(len(bounds)):
            planes: list[np.ndarray] = []
            rows: list[tuple[dict, int]] = []
            for read, (_, anns) in zip(reads, todo[slice(*bounds[k])]):
                index = {}
                for cid, plane in read.result().items():
                    index[cid] = len(planes)
                    planes.append(plane)
                rows.extend((a, index[a["category_id"]]) for a in anns)
            reads = submit(k + 1) if k + 1 < len(bounds) else []  # the caller is done with chunk k - 1
            yield planes, rows
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def pseudolabel_ccgr(ds: Dataset, *, maps_dir: str | Path, cfg: CCGRConfig, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None,
                     warn: Callable[[str], None] = lambda _msg: None) -> PseudoLabels:
    """Refine every box annotation of ``ds`` on the score maps in ``maps_dir`` (see the module
    docstring); ``seed`` seeds torch first; ``warn`` hears of boxes left out."""
    import torch

    torch.manual_seed(seed)
    todo = _boxed(ds, warn)
    out: list[Instance] = []
    summary = {"boxes": 0, "with_point": 0, "empty_masks": 0, "mean_box_iou_moved": None}
    moved: list[float] = []
    total = sum(len(a) for _, a in todo)
    for planes, rows in _read_ahead(ds, todo, maps_dir, cfg):
        boxes = xywh_to_xyxy(np.array([a["bbox"] for a, _ in rows], dtype=np.float64).reshape(-1, 4))
        pidx = np.array([p for _, p in rows], dtype=np.int64)
        points = np.array([a["point"] if a.get("point") is not None else (np.nan, np.nan) for a, _ in rows],
                          dtype=np.float64).reshape(-1, 2)
        refined = refine_boxes(planes, pidx, boxes, cfg, points=points, others=stop_points(points, boxes, pidx,
                                                                                             cfg.stop))
        moved.extend(float(box_iou(b[None], r[None])[0, 0]) for b, r in zip(boxes, refined))
        for (a, p), before, after in zip(rows, boxes, refined):
            mask = crop_masks(planes[p], after[None], cfg.mask_thr)[0]
            summary["empty_masks"] += int(not mask.any())
            out.append(Instance.from_mask(mask, id=a["id"], image_id=a["image_id"], category_id=a["category_id"],
                                          box=after, method="ccgr", fields=dict(a),
                                          wsis={"box_before": coco_bbox(before, BBOX_DECIMALS)}))
        summary["with_point"] += int((~np.isnan(points).any(axis=1)).sum())
        if progress:
            progress(len(out), total)
    summary["boxes"] = len(out)
    out.extend(_kept(a) for a in ds.annotations if a.get("iscrowd"))  # passed through as they are
    summary["mean_box_iou_moved"] = round(float(np.mean(moved)), 4) if moved else None
    options = {"boxes": ds.path, "maps": str(maps_dir), **cfg.to_dict()}
    prov = {**provenance("pseudolabel ccgr", options, seed), "summary": summary}
    return PseudoLabels.from_instances(out, source=ds, images=ds.images, summary=summary, provenance=prov,
                                       bbox_decimals=BBOX_DECIMALS, layout=LAYOUT)


def _kept(a: dict) -> Instance:
    """A crowd region, written as it is (its box, when it has one, kept for the core)."""
    box = xywh_to_xyxy(a["bbox"])[0] if a.get("bbox") is not None else None
    return Instance(id=a["id"], image_id=a["image_id"], category_id=a["category_id"], box=box, area=a.get("area"),
                    method="kept", fields=a)


def summary_line(summary: dict) -> str:
    """One line for people: boxes refined, with a point, how far they moved, empty masks."""
    msg = f"{summary['boxes']} boxes refined ({summary['with_point']} with a point)"
    if summary["mean_box_iou_moved"] is not None:
        msg += f"; mean IoU of each box with its start {summary['mean_box_iou_moved']:.2f}"
    if summary["empty_masks"]:
        msg += f"; {summary['empty_masks']} masks empty (no score above --mask-thr in the box)"
    return msg
