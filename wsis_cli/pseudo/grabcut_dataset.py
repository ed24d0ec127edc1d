"""GrabCut over a dataset (``pseudolabel grabcut``): box labels -> an instance mask on every box.

Each annotation gets a compressed-RLE ``segmentation``, its ``area`` and a record of how the
mask was made: ``"wsis": {"method": "grabcut"|"ellipse"|"box"|"none", "valid": bool,
"box_iou": float}``. Within an image, pixels claimed by two instances are resolved by the
``overlap`` policy (:mod:`wsis_cli.pseudo.overlap`; ``none`` leaves the masks overlapping).

Degenerate boxes never stop a run: boxes partly outside the image are clipped (a warning names
each), boxes with no area inside the image are skipped (a warning names each; they are left out
of the output), boxes too thin for GrabCut get the fallback.

Images run one per worker (:func:`grabcut_image`); a big image with many boxes (:class:`SplitRule`)
is cut into runs of boxes segmented across the workers (:func:`grabcut_chunk`), its overlaps then
resolved and its masks encoded in the parent: the same output for any number of workers. An image
that is the whole job runs its pieces on threads of this process (OpenCV frees the GIL).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from wsis_cli.boxes import SMALL_AREA, xywh_to_xyxy
from wsis_cli.coco import Dataset, ann_record, provenance, rle_to_json
from wsis_cli.errors import InputError
from wsis_cli.images import check_images, image_path
from wsis_cli.jobs import Job, Parts, ResumeLog, parse_shard, run_images, shard_images
from wsis_cli.pseudo.grabcut import BoxResult, GrabCutConfig, box_seed, resolve_overlaps, segment_boxes
from wsis_cli.pseudo.labels import Instance, PseudoLabels, coco_bbox

__all__ = ["BoxJob", "prepare_boxes", "grabcut_image", "grabcut_chunk", "SplitRule", "crop_to_rle",
           "pseudolabel_grabcut", "grabcut_job", "summary_line"]

VERB = "pseudolabel grabcut"
BBOX_DECIMALS = 4
LAYOUT = ("bbox", "segmentation", "area", "wsis")  # the box record's own fields stay in place


@dataclass
class BoxJob:
    """One image's work: where it is, its expected size, and its usable boxes."""

    image_id: int
    path: str
    height: int
    width: int
    ann_ids: list[int]
    boxes: list[list[float]]  # x1, y1, x2, y2, clipped to the image
    config: dict


def prepare_boxes(ds: Dataset, images: list[dict], images_dir: str | Path, cfg: GrabCutConfig,
                  warn: Callable[[str], None]) -> tuple[list[BoxJob], set[int]]:
    """Check and clip every box of ``images``; returns the jobs and the skipped annotation ids."""
    jobs, skipped = [], set()
    for im in images:
        path = image_path(images_dir, im, dataset=ds.path if ds.anns_by_image[im["id"]] else None)
        h, w = im["height"], im["width"]
        ids, boxes = [], []
        for a in ds.anns_by_image[im["id"]]:
            if a.get("bbox") is None:
                raise InputError(ds.path, "has no bbox; grabcut needs box labels", ann_record(a))
            box = xywh_to_xyxy(a["bbox"])[0]
            clipped = np.clip(box, 0, [w, h, w, h])
            if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
                warn(f"{ds.path}: {ann_record(a)}: box {a['bbox']} has no area inside the {w}x{h} image; skipped")
                skipped.add(a["id"])
                continue
            if not np.allclose(clipped, box):
                warn(f"{ds.path}: {ann_record(a)}: box {a['bbox']} extends outside the {w}x{h} image; clipped")
            ids.append(a["id"])
            boxes.append(clipped.tolist())
        jobs.append(BoxJob(im["id"], str(path), h, w, ids, boxes, cfg.to_dict()))
    with_boxes = [(im, Path(j.path)) for im, j in zip(images, jobs) if j.boxes]
    check_images([im for im, _ in with_boxes], [p for _, p in with_boxes], ds.path)  # before any work
    return jobs, skipped


_KEPT: list = []  # [(path, mtime, size), pixels]: the last picture read for pieces, in this process
_KEPT_LOCK = threading.Lock()


def _read(job: BoxJob, *, keep: bool = False) -> np.ndarray:
    """``job``'s picture, checked against the dataset's size. ``keep``: reuse and keep the last
    picture read so in this process (the pieces of a split image a process runs share it)."""
    from wsis_cli.images import read_image

    stat = os.stat(job.path) if keep and os.path.isfile(job.path) else None
    key = (job.path, stat.st_mtime_ns, stat.st_size) if stat else None
    if key is None:
        img = read_image(job.path)
    else:
        with _KEPT_LOCK:  # pieces on threads: the first decodes, the others wait for it
            if _KEPT and _KEPT[0] == key:
                img = _KEPT[1]
            else:
                img = read_image(job.path)
                _KEPT[:] = [key, img]
    if img.shape[:2] != (job.height, job.width):
        raise InputError(job.path, f"is {img.shape[1]}x{img.shape[0]} but image {job.image_id} of the dataset "
                                   f"says {job.width}x{job.height}")
    return img


def _segment(img: np.ndarray, job: BoxJob) -> list[BoxResult]:
    cfg = GrabCutConfig(**job.config)
    return segment_boxes(img, np.asarray(job.boxes, dtype=np.float64), [box_seed(cfg.seed, i) for i in job.ann_ids],
                         cfg)


def grabcut_image(job: BoxJob) -> dict:
    """Masks of one image's boxes: ``{"anns": {ann_id: {segmentation, area, wsis}}}`` (JSON-ready)."""
    if not job.boxes:
        return {"anns": {}}
    img = _read(job)
    return _join(job, [_segment(img, job)], img)


def grabcut_chunk(piece: BoxJob) -> list[BoxResult]:
    """The masks (crops, overlaps not yet resolved) of one piece of a split image: a run of its
    boxes, in a worker; :func:`_join` makes the image's result of all its pieces."""
    return _segment(_read(piece, keep=True), piece)


def _join(job: BoxJob, pieces: list[list[BoxResult]], img: np.ndarray | None = None) -> dict:
    """:func:`grabcut_image`'s result from the masks of all ``job``'s boxes, in pieces in order:
    overlaps resolved, each mask encoded from its crop. ``img``: the picture, when at hand (the
    ``evidence`` overlap policy reads it otherwise)."""
    if _KEPT and _KEPT[0][0] == job.path:  # this process ran pieces of the image: they are all in
        img = _KEPT[1] if img is None else img
        _KEPT.clear()
    policy = job.config.get("overlap", "smaller")
    if policy == "evidence" and img is None:
        img = _read(job)
    results = resolve_overlaps([r for piece in pieces for r in piece], job.ann_ids, job.height, job.width,
                               policy=policy, boxes=np.asarray(job.boxes, dtype=np.float64), image=img)
    out = {}
    for ann_id, r in zip(job.ann_ids, results):
        m = crop_to_rle(r.mask, r.offset, job.height, job.width)
        out[str(ann_id)] = {"segmentation": m, "area": float(r.mask.sum()) if r.mask is not None else 0.0,
                            "wsis": {"method": r.method, "valid": r.valid, "box_iou": round(r.box_iou, 6)}}
    return {"anns": out}


@dataclass(frozen=True)
class SplitRule:
    """When an image's boxes are cut into pieces run across the pool: it has at least ``boxes``
    boxes and ``pixels`` pixels. Pieces are runs of boxes in the image's order, each of
    ``ceil(left / (2 * workers))`` of the ``left`` boxes not yet in a piece, at least ``chunk``
    and at most ``most``: big first, small last, so the workers finish together, and none so long
    that an interrupt waits for it (a piece on a thread cannot be stopped; 16 boxes ≈ 0.3 s). The
    output does not depend on it (each box is seeded alone; overlaps are resolved once all the
    image's masks are in)."""

    boxes: int = 48
    pixels: int = 2_000_000
    chunk: int = 2
    most: int = 16

    def __call__(self, job: BoxJob, workers: int) -> Parts | None:
        n = len(job.boxes)
        if workers <= 1 or n < max(2, self.boxes) or job.height * job.width < self.pixels:
            return None
        starts = [0]
        while starts[-1] < n:
            size = min(max(1, self.most), max(1, self.chunk, -(-(n - starts[-1]) // (2 * workers))))
            starts.append(min(n, starts[-1] + size))
        if len(starts) < 3:
            return None
        pieces = [replace(job, ann_ids=job.ann_ids[a:b], boxes=job.boxes[a:b]) for a, b in zip(starts, starts[1:])]
        return Parts(fn=grabcut_chunk, pieces=pieces, join=partial(_join, job), threads=True)  # GrabCut frees the GIL


SPLIT = SplitRule()


def crop_to_rle(crop: np.ndarray | None, offset: tuple[int, int], height: int, width: int) -> dict:
    """The compressed RLE (JSON-ready) of the ``height x width`` mask holding ``crop`` at
    ``offset`` = ``(row0, col0)`` (None: empty), as :func:`~wsis_cli.coco.mask_to_rle` gives it,
    without making the full mask: only the columns the crop spans are scanned."""
    from pycocotools import mask as mask_utils

    if crop is None or not crop.any():
        counts = [height * width]
    else:
        (r0, c0), (mh, mw) = offset, crop.shape
        strip = np.zeros((mw, height), dtype=np.uint8)  # the crop's columns, column-major as COCO's RLE
        strip[:, r0:r0 + mh] = crop.T
        flat = strip.ravel()
        runs = np.diff(np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size])))
        if flat[0]:
            runs = np.concatenate(([0], runs))  # the counts start with a run of zeros
        runs[0] += c0 * height
        tail = (width - c0 - mw) * height
        if len(runs) % 2:  # it ends with zeros
            runs[-1] += tail
        elif tail:
            runs = np.append(runs, tail)
        counts = runs.tolist()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return rle_to_json(rle)


def _well_formed(job: BoxJob, result) -> bool:
    """Whether ``result`` (read back from a resume log) is what :func:`grabcut_image` gives for
    ``job``: a record for each of its boxes, each with an RLE mask, an area and a ``wsis`` block."""
    anns = result.get("anns") if isinstance(result, dict) else None
    if not isinstance(anns, dict) or set(anns) != ({str(i) for i in job.ann_ids} if job.boxes else set()):
        return False
    for made in anns.values():
        if not (isinstance(made, dict) and isinstance(made.get("segmentation"), dict)
                and isinstance(made["segmentation"].get("counts"), str)
                and isinstance(made.get("area"), (int, float)) and isinstance(made.get("wsis"), dict)
                and isinstance(made["wsis"].get("method"), str) and isinstance(made["wsis"].get("valid"), bool)
                and isinstance(made["wsis"].get("box_iou"), (int, float))):
            return False
    return True


def _summary() -> dict:
    """What happened to the boxes, split at 64×64 px of box area."""
    return {"masks": 0, "skipped": 0, "empty": 0,
            "by_size": {s: {"boxes": 0, "invalid": 0} for s in ("small", "large")}, "methods": {}}


def pseudolabel_grabcut(ds: Dataset, *, images_dir: str | Path, cfg: GrabCutConfig, shard: str | None = None,
                        workers: int = 1, log: ResumeLog | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        warn: Callable[[str], None] = lambda m: None, split: SplitRule | None = None) -> PseudoLabels:
    """Masks for the boxes of ``ds``'s images (slice ``shard`` = ``"K/N"`` of them, or all).

    Every kept box gets a row (its annotation's id and fields, the box clipped to the image, the
    mask, ``method`` and ``valid``, ``"wsis": {"box_iou"}``); boxes with no area in the image are
    left out. ``log``: finished images of an earlier run (:class:`~wsis_cli.jobs.ResumeLog`).
    ``split``: which images run as pieces across the ``workers`` (default :data:`SPLIT`); the
    output is the same whatever it and ``workers`` are."""
    images = shard_images(ds.images, parse_shard(shard))
    jobs, skipped = prepare_boxes(ds, images, images_dir, cfg, warn)
    rule = split or SPLIT
    results = run_images(grabcut_image, [(j.image_id, j) for j in jobs], workers=workers, log=log,
                         progress=progress, total=len(jobs), check=_well_formed,
                         split=lambda job: rule(job, workers))
    summary = _summary()
    summary["skipped"] = len(skipped)
    keep = {im["id"] for im in images}
    clipped = {i: b for j in jobs for i, b in zip(j.ann_ids, j.boxes)}
    rows = []
    for a in ds.annotations:
        if a["image_id"] not in keep or a["id"] in skipped:
            continue
        made = results[a["image_id"]]["anns"][str(a["id"])]
        wsis = dict(made["wsis"])
        method = wsis.pop("method")
        fields = {k: v for k, v in a.items() if k not in ("segmentation", "area", "wsis")}  # made anew, at the end
        rows.append(Instance(id=a["id"], image_id=a["image_id"], category_id=a["category_id"], box=clipped[a["id"]],
                             mask=made["segmentation"], area=made["area"], method=method, valid=wsis["valid"],
                             wsis=wsis, fields=fields))
        if made["area"] == 0:
            warn(f"{ds.path}: {ann_record(a)}: its mask lost every pixel to overlapping instances "
                 "(a duplicate box?); left empty and not valid")
        _, _, w, h = coco_bbox(clipped[a["id"]], BBOX_DECIMALS)
        size = "small" if w * h < SMALL_AREA else "large"
        summary["masks"] += 1
        summary["empty"] += made["area"] == 0
        summary["by_size"][size]["boxes"] += 1
        summary["by_size"][size]["invalid"] += not wsis["valid"]
        summary["methods"][method] = summary["methods"].get(method, 0) + 1
    provenance_ = provenance(VERB, _options(ds, images_dir, cfg, shard), cfg.seed)
    provenance_["summary"] = summary
    return PseudoLabels.from_instances(rows, source=ds, images=images, summary=summary, provenance=provenance_,
                                       bbox_decimals=BBOX_DECIMALS, layout=LAYOUT)


def _options(ds: Dataset, images_dir, cfg: GrabCutConfig, shard: str | None) -> dict:
    return {"boxes": ds.path, "images": str(images_dir), "shard": shard, **cfg.to_dict()}


def grabcut_job(ds: Dataset, *, images_dir: str | Path, cfg: GrabCutConfig, shard: str | None = None,
                workers: int = 1, progress: Callable[[int, int], None] | None = None,
                warn: Callable[[str], None] = lambda m: None, split: SplitRule | None = None) -> Job[PseudoLabels]:
    """:func:`pseudolabel_grabcut` as a resumable :class:`~wsis_cli.jobs.Job` (for
    :func:`~wsis_cli.jobs.run_job`): fingerprinted by its options (not the dataset's file name)
    and the images and annotations it covers."""
    images = shard_images(ds.images, parse_shard(shard))
    options = {k: v for k, v in _options(ds, images_dir, cfg, shard).items() if k != "boxes"}
    payload = [images, [a for im in images for a in ds.anns_by_image[im["id"]]]]
    return Job(verb=VERB, options=options, payload=payload, total=len(images),
               run=lambda log: pseudolabel_grabcut(ds, images_dir=images_dir, cfg=cfg, shard=shard, workers=workers,
                                                   log=log, progress=progress, warn=warn, split=split))


def summary_line(summary: dict) -> str:
    """One line for people: masks, invalid ones by box size, methods, skipped and empty."""
    parts = [f"{summary['masks']} masks"]
    for size, label in (("small", "small boxes (< 64x64 px)"), ("large", "large boxes")):
        b = summary["by_size"][size]
        if b["boxes"]:
            parts.append(f"{label}: {b['invalid']}/{b['boxes']} invalid ({100 * b['invalid'] / b['boxes']:.0f}%)")
    parts.append("methods: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["methods"].items())))
    if summary["skipped"]:
        parts.append(f"{summary['skipped']} boxes skipped (no area)")
    if summary["empty"]:
        parts.append(f"{summary['empty']} masks empty")
    return "; ".join(parts)
