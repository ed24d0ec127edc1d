"""MIL bags over a dataset (``pseudolabel bags``): each seed annotation (a PRM peak with its
"point" and region box, or a detector's box) gets its bag of proposals (:mod:`.proposals`).

Per image (a simple loop; selective search and the superpixels are computed once an image): the
image is read, its score maps (:mod:`.scoremaps`) give each seed's class plane, and every
non-crowd annotation is written whole with ``"wsis": {..., "bag": [[x, y, w, h], ...],
"bag_rank": [R, ...]}`` added, best first (Eq. 4). Crowd regions are passed through as they are.
A seed needs a ``bbox`` or a ``point``; one whose bag comes out empty is warned about and keeps
an empty bag (``train mil`` skips it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from wsis_cli.boxes import xywh_to_xyxy
from wsis_cli.coco import Dataset, ann_record, provenance
from wsis_cli.errors import InputError
from wsis_cli.images import image_path, read_sized_image
from wsis_cli.pseudo.labels import coco_bbox
from wsis_cli.pseudo.proposals import ImageProposals, ProposalConfig
from wsis_cli.pseudo.scoremaps import map_path, read_score_maps

__all__ = ["make_bags", "seed_of", "summary_line"]

BBOX_DECIMALS = 2


def seed_of(ds: Dataset, im: dict, a: dict) -> tuple[np.ndarray | None, tuple[float, float] | None]:
    """``(seed box x1, y1, x2, y2 or None, point (x, y) or None)`` of an annotation, checked: it
    needs one of them, a point must be finite and inside its image."""
    box = xywh_to_xyxy(a["bbox"])[0] if a.get("bbox") is not None else None
    p = a.get("point")
    if p is not None:
        if not (isinstance(p, list) and len(p) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)):
            raise InputError(ds.path, f"'point' must be [x, y], got {p!r}", ann_record(a))
        if not (np.isfinite(p).all() and 0 <= p[0] <= im["width"] and 0 <= p[1] <= im["height"]):
            raise InputError(ds.path, f"'point' {p} is not finite and inside its {im['width']}x{im['height']} "
                                      "image", ann_record(a))
        p = (float(p[0]), float(p[1]))
    if box is None and p is None:
        raise InputError(ds.path, "has neither a bbox nor a point to seed a bag", ann_record(a))
    return box, p


def _image_bags(ds: Dataset, im: dict, anns: list[dict], images_dir, maps_dir, cfg: ProposalConfig,
                warn: Callable[[str], None]) -> list[dict]:
    """The image's non-crowd annotations with their bags."""
    record = f"image {im['id']} ({im['file_name']})"
    seeds = [seed_of(ds, im, a) for a in anns]
    path = map_path(maps_dir, im)
    maps = read_score_maps(path, height=im["height"], width=im["width"], record=record)
    for a in anns:
        if a["category_id"] not in maps:
            raise InputError(str(path), f"has no plane for category {a['category_id']}, needed by {ann_record(a)} "
                                        f"of {ds.path}", record)
    props = ImageProposals(read_sized_image(image_path(images_dir, im, dataset=ds.path), im, ds.path), cfg)
    out = []
    for i, (a, (box, point)) in enumerate(zip(anns, seeds)):
        others = [s[1] for j, s in enumerate(seeds) if j != i and s[1] is not None
                  and anns[j]["category_id"] == a["category_id"]]
        boxes, ranks = props.bag(maps[a["category_id"]], seed=box, point=point, others=others)
        if len(boxes) == 0:
            warn(f"{ds.path}: {ann_record(a)}: no proposal fits its seed; its bag is empty")
        wsis = {**(a.get("wsis") or {}), "bag": [coco_bbox(b, BBOX_DECIMALS) for b in boxes],
                "bag_rank": [round(float(r), 6) for r in ranks]}
        out.append({**a, "wsis": wsis})
    return out


def make_bags(ds: Dataset, *, images_dir: str | Path, maps_dir: str | Path, cfg: ProposalConfig, seed: int = 0,
              progress: Callable[[int, int], None] | None = None,
              warn: Callable[[str], None] = lambda _msg: None) -> tuple[Dataset, dict]:
    """``(the dataset with bags, summary)``: see the module docstring. Deterministic (``seed`` is
    recorded; nothing here draws random numbers). Summary: ``{"images", "bags", "empty",
    "mean_size"}``."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # selective search's threads would fight the caller's workers
    try:
        anns_out: list[dict] = []
        todo = [im for im in ds.images if any(not a.get("iscrowd") for a in ds.anns_by_image[im["id"]])]
        for k, im in enumerate(todo):
            anns = [a for a in ds.anns_by_image[im["id"]] if not a.get("iscrowd")]
            anns_out.extend(_image_bags(ds, im, anns, images_dir, maps_dir, cfg, warn))
            if progress:
                progress(k + 1, len(todo))
    finally:
        cv2.setNumThreads(threads)
    sizes = [len(a["wsis"]["bag"]) for a in anns_out]
    summary = {"images": len(todo), "bags": len(sizes), "empty": sum(s == 0 for s in sizes),
               "mean_size": round(float(np.mean(sizes)), 3) if sizes else None}
    anns_out.extend(a for a in ds.annotations if a.get("iscrowd"))
    options = {"seeds": ds.path, "images": str(images_dir), "maps": str(maps_dir), **cfg.to_dict()}
    info = {**ds.info, "wsis": {**provenance("pseudolabel bags", options, seed), "summary": summary}}
    return replace(ds, annotations=anns_out, info=info), summary


def summary_line(summary: dict) -> str:
    msg = f"{summary['bags']} bags on {summary['images']} images"
    if summary["mean_size"] is not None:
        msg += f", {summary['mean_size']:.1f} proposals a bag"
    if summary["empty"]:
        msg += f"; {summary['empty']} empty (no proposal fits the seed)"
    return msg
