"""Strip a fully annotated dataset down to weaker supervision, keeping image and annotation ids.

- ``box``: each annotation keeps its ``bbox`` (computed from the mask when absent) and loses
  its segmentation; ``area`` becomes the box area. Crowd regions stay, as crowd boxes.
- ``ilc``: image-level labels with counts, one annotation per non-crowd instance holding only
  ``id``, ``image_id``, ``category_id``. Crowd regions are dropped (they hold an unknown
  number of instances), but a class present only as crowd still appears, as an ``il`` label.
  Labels that already carry a ``count`` (a compact ``ilc`` count, or ``null`` for ``il``)
  keep it: weakening never invents a count.
- ``il``: one annotation per (image, present class) with ``"count": null``; its id is that of
  the class's first annotation in the image.
"""

from __future__ import annotations

from dataclasses import replace

from wsis_cli.coco import Dataset, has_segmentation
from wsis_cli.errors import InputError, WsisError

__all__ = ["LEVELS", "weaken"]

LEVELS = ("box", "ilc", "il")


def _box_of(ds: Dataset, a: dict) -> list[float]:
    from pycocotools import mask as mask_utils

    if a.get("bbox") is not None:
        return [float(v) for v in a["bbox"]]
    if has_segmentation(a):
        return [float(v) for v in mask_utils.toBbox(ds.rle(a))]
    raise InputError(ds.path, "has neither a bbox nor a mask, so it cannot become a box label",
                     f"annotation {a['id']} (image {a['image_id']})")


def weaken(ds: Dataset, to: str) -> Dataset:
    """A new dataset at supervision level ``to`` (``box``, ``ilc`` or ``il``)."""
    if to not in LEVELS:
        raise WsisError(f"--to must be one of {', '.join(LEVELS)}, got {to!r}")
    out: list[dict] = []
    if to == "box":
        for a in ds.annotations:
            box = _box_of(ds, a)
            out.append({"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": box, "area": box[2] * box[3], "iscrowd": a.get("iscrowd", 0)})
    elif to == "ilc":
        non_crowd = {(a["image_id"], a["category_id"]) for a in ds.annotations if not a.get("iscrowd")}
        crowd_only: set[tuple[int, int]] = set()
        for a in ds.annotations:
            key = (a["image_id"], a["category_id"])
            if "count" in a:  # already image-level: keep what is known of the count
                out.append({"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                            "count": a["count"]})
            elif not a.get("iscrowd"):
                out.append({"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"]})
            elif key not in non_crowd and key not in crowd_only:
                crowd_only.add(key)
                out.append({"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                            "count": None})
    else:
        seen: set[tuple[int, int]] = set()
        for a in ds.annotations:
            key = (a["image_id"], a["category_id"])
            if key not in seen:
                seen.add(key)
                out.append({"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                            "count": None})
    return replace(ds, annotations=out)
