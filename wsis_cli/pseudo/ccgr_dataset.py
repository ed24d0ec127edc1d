"""CCGR over a dataset (``pseudolabel ccgr``): every box annotation refined on its image's class
score map (:mod:`wsis_cli.pseudo.scoremaps`), then cut into a mask.

Images are taken in chunks of at most ``cfg.chunk_pixels`` plane pixels; all boxes of a chunk
are optimised together (:func:`wsis_cli.pseudo.ccgr.refine_boxes`) while two threads read the next
chunk's score maps (each image's file once), so two chunks' planes are in memory at once. Each
annotation keeps its fields and gets a mask by :mod:`wsis_cli.pseudo.ccgr_masks` (the guard, the
mask rule, the empty-mask policy), ``bbox`` = that mask's box, its ``area`` and ``"wsis": {...,
"method": "ccgr", "box_before": [x, y, w, h], "ccgr_box": the box the mask was cut with}``; crowd
regions are passed through as they are, after the refined boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from wsis_cli.boxes import box_iou, xywh_to_xyxy
from wsis_cli.coco import Dataset, ann_record, has_segmentation, labels_of, provenance, rle_to_mask, segm_to_rle
from wsis_cli.errors import InputError
from wsis_cli.pseudo.ccgr import CCGRConfig, refine_boxes, stop_points
from wsis_cli.pseudo.ccgr_masks import box_of_mask, components, duplicates, instance_mask, plausible
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
                     labels: Dataset | None = None, progress: Callable[[int, int], None] | None = None,
                     warn: Callable[[str], None] = lambda _msg: None) -> PseudoLabels:
    """Refine every box annotation of ``ds`` on the score maps in ``maps_dir`` (see the module
    docstring), drop duplicates and, with ``labels`` (image-level labels of the same images), add
    the instances the maps show beyond the boxes, up to the counts; ``seed`` seeds torch first;
    ``warn`` hears of boxes left out and instances dropped."""
    import torch

    torch.manual_seed(seed)
    todo = _boxed(ds, warn)
    out: list[Instance] = []
    summary = {"boxes": 0, "with_point": 0, "kept_box": 0, "fallback": 0, "dropped": 0, "duplicates": 0, "added": 0,
               "mean_box_iou_moved": None}
    moved: list[float] = []
    total = sum(len(a) for _, a in todo)
    done = 0
    for planes, rows in _read_ahead(ds, todo, maps_dir, cfg):
        boxes = xywh_to_xyxy(np.array([a["bbox"] for a, _ in rows], dtype=np.float64).reshape(-1, 4))
        pidx = np.array([p for _, p in rows], dtype=np.int64)
        given = np.array([a["point"] if a.get("point") is not None else (np.nan, np.nan) for a, _ in rows],
                         dtype=np.float64).reshape(-1, 2)
        points = given.copy()
        if cfg.centres:  # a box without a point keeps its centre and stops at its neighbours'
            none = np.isnan(points).any(axis=1)
            points[none] = (boxes[none, :2] + boxes[none, 2:]) / 2
        refined = refine_boxes(planes, pidx, boxes, cfg, points=points, others=stop_points(points, boxes, pidx,
                                                                                             cfg.stop))
        incoming = [rle_to_mask(ds.rle(a)) if has_segmentation(a) else None for a, _ in rows]
        owners = _owners(incoming, pidx)
        for k, ((a, p), before, after) in enumerate(zip(rows, boxes, refined)):
            inst = _instance(a, planes[p], before, after, incoming[k], owners, p, cfg, summary)
            done += 1
            if inst is not None:
                used = xywh_to_xyxy(inst.wsis["ccgr_box"])[0]
                moved.append(float(box_iou(before[None], used[None])[0, 0]))
                out.append(inst)
        summary["with_point"] += int((~np.isnan(given).any(axis=1)).sum())
        if progress:
            progress(done, total)
    summary["boxes"] = len(out)
    out = _without_duplicates(out, cfg, summary)
    if labels is not None:
        out.extend(_missed(ds, labels, out, maps_dir, cfg, summary))
    out.extend(_kept(a) for a in ds.annotations if a.get("iscrowd"))  # passed through as they are
    summary["mean_box_iou_moved"] = round(float(np.mean(moved)), 4) if moved else None
    if summary["dropped"]:
        warn(f"{ds.path}: {summary['dropped']} instances dropped: their mask came out empty under --mask-rule "
             f"{cfg.mask_rule} (--empty incoming keeps their own mask)")
    options = {"boxes": ds.path, "maps": str(maps_dir), **({"labels": labels.path} if labels is not None else {}),
               **cfg.to_dict()}
    prov = {**provenance("pseudolabel ccgr", options, seed), "summary": summary}
    return PseudoLabels.from_instances(out, source=ds, images=ds.images, summary=summary, provenance=prov,
                                       bbox_decimals=BBOX_DECIMALS, layout=LAYOUT)


def _score(inst: Instance) -> float:
    s = inst.score if inst.score is not None else inst.fields.get("score")
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else 0.0


def _without_duplicates(out: list[Instance], cfg: CCGRConfig, summary: dict) -> list[Instance]:
    """``out`` less the lower-scored of any two same-class masks of an image overlapping by IoU above
    ``cfg.dedup`` (counted in ``duplicates``)."""
    if cfg.dedup >= 1.0 or len(out) < 2:
        return out
    dup = duplicates([segm_to_rle(i.mask, *i.mask["size"]) for i in out], [_score(i) for i in out],
                     [(i.image_id, i.category_id) for i in out], cfg.dedup)
    summary["duplicates"] = int(dup.sum())
    return [i for i, d in zip(out, dup) if not d]


def _missed(ds: Dataset, labels: Dataset, out: list[Instance], maps_dir, cfg: CCGRConfig, summary: dict) -> list:
    """New instances from the maps where ``labels`` count more of a class in an image than ``out``
    holds (an IL label, no count: when it holds none): the largest uncovered components of the
    class's plane above ``cfg.mask_thr``, each scored by its mean plane value."""
    have: dict[tuple[int, int], list[Instance]] = {}
    for inst in out:
        have.setdefault((inst.image_id, inst.category_id), []).append(inst)
    next_id = max((int(a["id"]) for a in ds.annotations), default=0) + 1
    added: list[Instance] = []
    for im in ds.images:
        want = {c: (1 if n is None else n) - len(have.get((im["id"], c), []))
                for c, n in labels_of(labels.anns_by_image.get(im["id"], [])).items()}
        want = {c: k for c, k in want.items() if k > 0}
        if not want:
            continue
        path, record = map_path(maps_dir, im), f"image {im['id']} ({im['file_name']})"
        if not path.is_file():
            continue  # no map of this image (predict-maps writes none for an image it cannot label)
        planes = read_score_maps(path, height=im["height"], width=im["width"], record=record)
        for cid, k in sorted(want.items()):
            if cid not in planes:
                continue
            covered = np.zeros((im["height"], im["width"]), dtype=bool)
            for inst in have.get((im["id"], cid), []):
                covered |= rle_to_mask(inst.mask)
            for m in components(planes[cid], covered, thr=cfg.mask_thr, k=k, min_area=cfg.min_component):
                box, score = box_of_mask(m), round(float(planes[cid][m].mean()), 6)
                fields = {"id": next_id, "image_id": im["id"], "category_id": cid, "iscrowd": 0, "score": score}
                added.append(Instance.from_mask(m, id=next_id, image_id=im["id"], category_id=cid, box=box,
                                                score=score, method="ccgr", fields=fields,
                                                wsis={"added": "map component",
                                                      "ccgr_box": coco_bbox(box, BBOX_DECIMALS)}))
                next_id += 1
    summary["added"] = len(added)
    return added


def _owners(incoming: list, pidx: np.ndarray) -> dict[int, np.ndarray]:
    """``{plane index: int (H, W)}``: how many incoming masks of the plane's class (one image, one
    class) hold each pixel."""
    counts: dict[int, np.ndarray] = {}
    for m, p in zip(incoming, pidx.tolist()):
        if m is not None:
            counts[p] = counts.get(p, 0) + m.astype(np.int32)
    return counts


def _instance(a: dict, plane: np.ndarray, before, after, incoming, owners, p: int, cfg: CCGRConfig,
              summary: dict) -> Instance | None:
    """One annotation's output (the module docstring of :mod:`wsis_cli.pseudo.ccgr_masks`), or None
    when it is dropped (counted)."""
    wsis = {"box_before": coco_bbox(before, BBOX_DECIMALS)}
    if not plausible(before, after, incoming, keep_region=cfg.keep_region, max_grow=cfg.max_grow):
        after = before
        summary["kept_box"] += 1
        wsis["kept_box"] = True
    others = None
    if p in owners:
        others = owners[p] - (incoming if incoming is not None else 0) > 0
    mask = instance_mask(plane, after, incoming, others, rule=cfg.mask_rule, mask_thr=cfg.mask_thr,
                         contradict=cfg.contradict)
    if not mask.any() and cfg.empty == "incoming" and incoming is not None and incoming.any():
        mask, after = incoming, before
        summary["fallback"] += 1
        wsis["fallback"] = "incoming"
    if not mask.any():
        summary["dropped"] += 1
        return None
    wsis["ccgr_box"] = coco_bbox(after, BBOX_DECIMALS)
    return Instance.from_mask(mask, id=a["id"], image_id=a["image_id"], category_id=a["category_id"],
                              box=box_of_mask(mask), method="ccgr", fields=dict(a), wsis=wsis)


def _kept(a: dict) -> Instance:
    """A crowd region, written as it is (its box, when it has one, kept for the core)."""
    box = xywh_to_xyxy(a["bbox"])[0] if a.get("bbox") is not None else None
    return Instance(id=a["id"], image_id=a["image_id"], category_id=a["category_id"], box=box, area=a.get("area"),
                    method="kept", fields=a)


def summary_line(summary: dict) -> str:
    """One line for people: boxes refined, with a point, how far they moved, what the guards did."""
    msg = f"{summary['boxes']} boxes refined ({summary['with_point']} with a point)"
    if summary["mean_box_iou_moved"] is not None:
        msg += f"; mean IoU of each box with its start {summary['mean_box_iou_moved']:.2f}"
    if summary["kept_box"]:
        msg += f"; {summary['kept_box']} implausible moves undone (input box kept)"
    if summary["fallback"]:
        msg += f"; {summary['fallback']} empty masks replaced by the incoming mask"
    if summary["dropped"]:
        msg += f"; {summary['dropped']} dropped (empty masks)"
    if summary.get("duplicates"):
        msg += f"; {summary['duplicates']} duplicates dropped"
    if summary.get("added"):
        msg += f"; {summary['added']} missed instances added from the maps"
    return msg
