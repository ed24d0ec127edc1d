"""A dataset of box labels -> the same dataset with an instance mask on every box.

Each annotation gets a compressed-RLE ``segmentation``, its ``area`` and a record of how the
mask was made: ``"wsis": {"method": "grabcut"|"ellipse"|"box"|"none", "valid": bool,
"box_iou": float}``. Within an image, pixels claimed by two instances go to the smaller one,
so instance masks never overlap.

Degenerate boxes never stop a run: boxes partly outside the image are clipped (a warning names
each), boxes with no area inside the image are skipped (a warning names each; they are left out
of the output), boxes too thin for GrabCut get the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from wsis_cli.boxes import xywh_to_xyxy, xyxy_to_xywh
from wsis_cli.coco import Dataset, ann_record, mask_to_rle
from wsis_cli.errors import InputError
from wsis_cli.images import image_path
from wsis_cli.metrics.coco_eval import SMALL_AREA
from wsis_cli.jobs import ResumeLog, run_images
from wsis_cli.pseudo.grabcut import GrabCutConfig, box_seed, resolve_overlaps, segment_boxes

__all__ = ["BoxJob", "prepare_boxes", "grabcut_image", "pseudolabel_boxes", "Summary"]


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
    return jobs, skipped


def grabcut_image(job: BoxJob) -> dict:
    """Masks of one image's boxes: ``{"anns": {ann_id: {segmentation, area, wsis}}}`` (JSON-ready)."""
    from wsis_cli.images import read_image

    if not job.boxes:
        return {"anns": {}}
    cfg = GrabCutConfig(**job.config)
    img = read_image(job.path)
    if img.shape[:2] != (job.height, job.width):
        raise InputError(job.path, f"is {img.shape[1]}x{img.shape[0]} but image {job.image_id} of the dataset "
                                   f"says {job.width}x{job.height}")
    boxes = np.asarray(job.boxes, dtype=np.float64)
    results = segment_boxes(img, boxes, [box_seed(cfg.seed, i) for i in job.ann_ids], cfg)
    results = resolve_overlaps(results, job.ann_ids, job.height, job.width)
    out = {}
    for ann_id, r in zip(job.ann_ids, results):  # one full-size mask at a time
        m = r.full(job.height, job.width)
        if m is None:
            m = np.zeros((job.height, job.width), dtype=bool)
        out[str(ann_id)] = {"segmentation": mask_to_rle(m), "area": float(m.sum()),
                            "wsis": {"method": r.method, "valid": r.valid, "box_iou": round(r.box_iou, 6)}}
    return {"anns": out}


@dataclass
class Summary:
    """What happened to the boxes, split at 64×64 px of box area."""

    masks: int = 0
    skipped: int = 0
    empty: int = 0
    by_size: dict = field(default_factory=lambda: {s: {"boxes": 0, "invalid": 0} for s in ("small", "large")})
    methods: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"masks": self.masks, "skipped": self.skipped, "empty": self.empty,
                "by_size": self.by_size, "methods": self.methods}


def pseudolabel_boxes(ds: Dataset, images: list[dict], images_dir: str | Path, cfg: GrabCutConfig, *,
                      workers: int = 1, log: ResumeLog | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      warn: Callable[[str], None] = lambda m: None) -> tuple[Dataset, Summary]:
    """Masks for the boxes of ``images`` (a shard of ``ds`` or all of it)."""
    jobs, skipped = prepare_boxes(ds, images, images_dir, cfg, warn)
    results = run_images(grabcut_image, [(j.image_id, j) for j in jobs], workers=workers, log=log,
                         progress=progress, total=len(jobs))
    summary = Summary(skipped=len(skipped))
    keep = {im["id"] for im in images}
    clipped = {i: b for j in jobs for i, b in zip(j.ann_ids, j.boxes)}
    annotations = []
    for a in ds.annotations:
        if a["image_id"] not in keep or a["id"] in skipped:
            continue
        made = results[a["image_id"]]["anns"][str(a["id"])]
        out = {k: v for k, v in a.items() if k not in ("segmentation", "area", "wsis")}
        out["bbox"] = [round(float(v), 4) for v in xyxy_to_xywh([clipped[a["id"]]])[0]]
        out.update(segmentation=made["segmentation"], area=made["area"], wsis=made["wsis"])
        annotations.append(out)
        if made["area"] == 0:
            warn(f"{ds.path}: {ann_record(a)}: its mask lost every pixel to smaller overlapping instances "
                 "(a duplicate box?); left empty and not valid")
        size = "small" if out["bbox"][2] * out["bbox"][3] < SMALL_AREA else "large"
        summary.masks += 1
        summary.empty += made["area"] == 0
        summary.by_size[size]["boxes"] += 1
        summary.by_size[size]["invalid"] += not made["wsis"]["valid"]
        summary.methods[made["wsis"]["method"]] = summary.methods.get(made["wsis"]["method"], 0) + 1
    return replace(ds, images=images, annotations=annotations), summary
