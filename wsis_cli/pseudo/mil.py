"""One box per bag from a trained MIL branch (``pseudolabel mil``): the CCGR paper's MIL step.

For each image with bags (``pseudolabel bags``), one forward pass of the WSDDN model
(:mod:`wsis_cli.engine.train_mil`) scores all its proposals; each bag takes the proposal with the
highest score ``x[r, c]`` for the bag's class ``c``. Every annotation keeps all its fields (its
mask and ``point`` stay: CCGR reads them) and gets ``bbox`` = the chosen proposal and ``"wsis":
{..., "method": "mil", "box_before": the old bbox, "mil_score": x}``. Annotations with an empty
bag and crowd regions are written as they are, in the dataset's order.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wsis_cli.boxes import box_iou, xywh_to_xyxy
from wsis_cli.coco import Dataset, ann_record, provenance
from wsis_cli.engine.mil_data import image_bags, image_input
from wsis_cli.engine.train_mil import load_mil
from wsis_cli.errors import InputError
from wsis_cli.images import read_sized_image
from wsis_cli.pseudo.labels import coco_bbox

__all__ = ["proposal_scores", "pseudolabel_mil", "summary_line"]

BBOX_DECIMALS = 2


@torch.inference_mode()
def proposal_scores(model, rgb: np.ndarray, boxes: list[np.ndarray], *, size: int,
                    device: torch.device) -> list[np.ndarray]:
    """Per bag, ``float32 (k, C)`` proposal scores ``x`` of one image (``HxWx3`` uint8) whose bags
    hold ``boxes`` (each ``(k, 4)`` ``x1, y1, x2, y2`` in image px), in one pass of ``model``."""
    x, scaled = image_input(rgb, boxes, size)
    rois = torch.cat([torch.cat([torch.zeros(len(b), 1), b], dim=1) for b in scaled])
    bag = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(scaled)])
    scores, _ = model(x[None].to(device), rois.to(device), bag.to(device), len(scaled))
    scores = scores.float().cpu().numpy()
    return np.split(scores, np.cumsum([len(b) for b in boxes])[:-1])


def pseudolabel_mil(ds: Dataset, *, images_dir: str | Path, model: str | Path, device: "str | torch.device" = "cpu",
                    progress: Callable[[int, int], None] | None = None) -> tuple[Dataset, dict]:
    """``(the dataset with one MIL box per bag, summary)`` (see the module docstring). Summary:
    ``{"bags", "unchanged", "mean_iou_seed"}``: boxes chosen, annotations kept as they were, the
    mean IoU of each chosen box with its annotation's old bbox."""
    net, config = load_mil(model, device=device)
    dev = next(net.parameters()).device
    col = {cid: k for k, cid in enumerate(config["category_ids"])}
    items = image_bags(ds, images_dir)
    for it in items:
        for a in it.anns:
            if a["category_id"] not in col:
                raise InputError(ds.path, f"its category {a['category_id']} is not one of the model's "
                                          f"{config['category_ids']} ({model})", ann_record(a))
    chosen: dict[int, dict] = {}
    ious = []
    for k, it in enumerate(items):
        rgb = read_sized_image(it.path, it.image, ds.path)
        for a, boxes, scores in zip(it.anns, it.boxes, proposal_scores(net, rgb, it.boxes, size=config["size"],
                                                                       device=dev)):
            s = scores[:, col[a["category_id"]]]
            r = int(np.argmax(s))
            if a.get("bbox") is not None:
                ious.append(float(box_iou(xywh_to_xyxy(a["bbox"]), boxes[r:r + 1])[0, 0]))
            wsis = {**(a.get("wsis") or {}), "method": "mil", "box_before": a.get("bbox"),
                    "mil_score": round(float(s[r]), 6)}
            chosen[a["id"]] = {**a, "bbox": coco_bbox(boxes[r], BBOX_DECIMALS), "wsis": wsis}
        if progress:
            progress(k + 1, len(items))
    summary = {"bags": len(chosen), "unchanged": len(ds.annotations) - len(chosen),
               "mean_iou_seed": round(float(np.mean(ious)), 4) if ious else None}
    options = {"bags": ds.path, "images": str(images_dir), "model": str(model)}
    info = {**ds.info, "wsis": {**provenance("pseudolabel mil", options, None), "summary": summary}}
    return replace(ds, annotations=[chosen.get(a["id"], a) for a in ds.annotations], info=info), summary


def summary_line(summary: dict) -> str:
    msg = f"{summary['bags']} boxes chosen by MIL"
    if summary["mean_iou_seed"] is not None:
        msg += f"; mean IoU with the seed box {summary['mean_iou_seed']:.2f}"
    if summary["unchanged"]:
        msg += f"; {summary['unchanged']} annotations unchanged (empty bag or crowd)"
    return msg
