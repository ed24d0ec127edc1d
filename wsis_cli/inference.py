"""Run a trained detector over images: ``predict`` (with the hybrid two-branch fusion),
``pseudolabel net`` and the model half of ``score-iou``. Torch is imported only inside the
functions that run a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsis_cli.coco import Dataset
from wsis_cli.errors import WsisError

__all__ = ["IMAGE_SUFFIXES", "folder_images", "load_models", "predict", "net_pseudolabels", "predicted_scores"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def folder_images(images_dir: str | os.PathLike) -> list[dict]:
    """COCO image records for the image files directly in ``images_dir``, ids 1..N in sorted
    file-name order (what ``predict`` numbers images by when no dataset is given)."""
    from wsis_cli.images import read_image

    files = sorted(p for p in Path(images_dir).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise WsisError(f"{images_dir}: holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for i, p in enumerate(files, start=1):
        h, w = read_image(p).shape[:2]
        out.append({"id": i, "file_name": p.name, "height": h, "width": w})
    return out


def load_models(run: str | os.PathLike, device, *, small_branch: str | os.PathLike | None = None):
    """``(model, config, small_model, small_config)``; the small branch must be a box-only detector
    of the same categories as ``run``'s mask model."""
    from wsis_cli.engine.detector import load_run

    model, config = load_run(run, device=device)
    if small_branch is None:
        return model, config, None, None
    if config["architecture"] != "maskrcnn":
        raise WsisError(f"{run}: --small-branch fuses with a mask model, and this one was trained with --boxes-only")
    small, small_cfg = load_run(small_branch, device=device)
    if small_cfg["architecture"] != "fasterrcnn":
        raise WsisError(f"{small_branch}: the small branch must be a box-only detector (train maskrcnn --boxes-only)")
    if small_cfg["category_ids"] != config["category_ids"]:
        raise WsisError(f"{small_branch}: was trained on categories {small_cfg['category_ids']}, the mask model on "
                        f"{config['category_ids']}; both branches need the same categories")
    return model, config, small, small_cfg


def predict(run, images_dir, *, dataset: Dataset | None = None, device="cpu", score_thr: float = 0.05,
            batch_size: int = 1, small_branch=None, small_area: float = 64 * 64, nms_iou: float = 0.5,
            seed: int = 0, progress: Callable[[int, int], None] | None = None,
            loaded: tuple | None = None) -> tuple[list[dict], dict]:
    """COCO results for every image of ``dataset`` (else of the folder, see
    :func:`folder_images`) and a summary. With ``small_branch``, the hybrid fusion: the box-only
    model's detections under ``small_area`` px of box area get GrabCut masks (an ellipse when
    GrabCut's mask is invalid) and compete with the mask model's small ones in class-wise NMS;
    larger instances come from the mask model alone. ``loaded``: ``run``'s ``(model, config)``
    when the caller has loaded it already. The summary's ``image_ids`` are the images predicted on."""
    from wsis_cli.engine.detector import detect, predict_dataset
    from wsis_cli.fusion import fuse_with_grabcut
    from wsis_cli.pseudo.grabcut import GrabCutConfig

    dev = _device(device)
    if loaded is not None and small_branch is None:
        (model, config), small, small_cfg = loaded, None, None
    else:
        model, config, small, small_cfg = load_models(run, dev, small_branch=small_branch)
    images = dataset.images if dataset is not None else folder_images(images_dir)
    summary: dict[str, Any] = {"images": len(images), "image_ids": [im["id"] for im in images],
                               "architecture": config["architecture"],
                               "iou_head": bool(config.get("iou_head"))}
    transform = None
    if small is not None:
        gc = GrabCutConfig(seed=seed)
        counts = {"from_small_branch": 0, "ellipses": 0}

        def transform(im: dict, rgb: np.ndarray, large):
            boxes = detect(small, small_cfg, [rgb], device=dev, score_thr=score_thr)[0]
            fused = fuse_with_grabcut(rgb, large, boxes, gc, seed + int(im["id"]), small_area=small_area,
                                      nms_iou=nms_iou)
            counts["from_small_branch"] += int(fused.from_small.sum())
            counts["ellipses"] += int((fused.from_small & ~fused.valid).sum())
            return fused.detections

        summary["fusion"] = counts
    results = predict_dataset(model, config, dataset, images, images_dir, device=dev, score_thr=score_thr,
                              batch_size=batch_size, transform=transform, progress=progress)
    summary["detections"] = len(results)
    return results, summary


def _device(device):
    from wsis_cli.engine.device import resolve_device

    return resolve_device(device) if isinstance(device, str) else device


def net_pseudolabels(ds: Dataset, images_dir, run, *, device="cpu", rank: str = "score", score_thr: float = 0.05,
                     options: dict | None = None, progress=None, loaded: tuple | None = None) -> tuple[Dataset, dict]:
    """``pseudolabel net``: the annotation network labels the weak images of ``ds`` (see
    :mod:`wsis_cli.pseudo.net` for the rules). ``loaded``: ``run``'s ``(model, config)`` when the
    caller has loaded it already."""
    from wsis_cli.engine.detector import detect, masks_in_boxes, read_sized_image
    from wsis_cli.images import image_path
    from wsis_cli.pseudo.net import pseudolabel_net_dataset

    dev = _device(device)
    model, config = loaded if loaded is not None else load_models(run, dev)[:2]
    if config["architecture"] != "maskrcnn":
        raise WsisError(f"{run}: was trained with --boxes-only; pseudo-labels need a mask model")
    if rank == "iou" and not config.get("iou_head"):
        raise WsisError(f"{run}: has no IoU head (train with --iou-head) to rank by predicted IoU; use --rank score")
    known = set(config["category_ids"])
    unknown = sorted({a["category_id"] for a in ds.annotations} - known)
    if unknown:
        raise WsisError(f"{ds.path}: categories {unknown} are not among the model's {sorted(known)}")
    cache: dict[int, np.ndarray] = {}

    def rgb_of(im: dict) -> np.ndarray:
        if im["id"] not in cache:
            cache.clear()
            cache[im["id"]] = read_sized_image(image_path(images_dir, im, dataset=ds.path), im, ds.path)
        return cache[im["id"]]

    def run_detect(im: dict):
        return detect(model, config, [rgb_of(im)], device=dev, score_thr=min(score_thr, 0.05))[0]

    def masks_for(im: dict):
        return lambda boxes, cats: masks_in_boxes(model, config, rgb_of(im), boxes, cats, device=dev)

    return pseudolabel_net_dataset(ds, ds.images, run_detect, masks_for, rank=rank, score_thr=score_thr,
                                   options=options, progress=progress)


def predicted_scores(*, model, images, dataset: Dataset | None = None, device="cpu", score_thr: float = 0.05,
                     batch_size: int = 1, rank: str = "score", progress=None) -> dict:
    """The model half of ``score-iou`` (``{"images": [...]}``, without ``info``): each instance's
    predicted IoU and each image's score (their
    mean, the paper's Eq. 2). With a dataset holding image-level labels (IL/IL+C) or boxes, the
    instances are those ``pseudolabel net`` makes, named by the ``annotation_id`` it gives them;
    otherwise every detection scoring at least ``score_thr``, named by its ``index`` in the
    results list ``predict`` writes with the same options."""
    from wsis_cli.coco import supervision_level

    dev = _device(device)
    loaded = load_models(model, dev)[:2]
    if not loaded[1].get("iou_head"):
        raise WsisError(f"{model}: has no IoU head; train it with --iou-head to predict mask IoUs")
    weak = dataset is not None and any(supervision_level(a) != "full" for a in dataset.annotations)
    if weak:
        pseudo, _ = net_pseudolabels(dataset, images, model, device=dev, rank=rank, score_thr=score_thr,
                                     progress=progress, loaded=loaded)
        per_image: dict[int, list[dict]] = {im["id"]: [] for im in dataset.images}
        for a in pseudo.annotations:
            if a.get("iou") is not None:
                per_image[a["image_id"]].append({"annotation_id": int(a["id"]), "iou": round(float(a["iou"]), 6)})
    else:
        results, summary = predict(model, images, dataset=dataset, device=dev, score_thr=score_thr,
                                   batch_size=batch_size, progress=progress, loaded=loaded)
        per_image = {i: [] for i in summary["image_ids"]}
        for index, r in enumerate(results):
            per_image[r["image_id"]].append({"index": index, "iou": round(float(r["iou"]), 6)})
    out = []
    for iid, inst in per_image.items():
        score = round(float(np.mean([r["iou"] for r in inst])), 6) if inst else None
        out.append({"image_id": int(iid), "score": score, "instances": inst})
    return {"images": out}
