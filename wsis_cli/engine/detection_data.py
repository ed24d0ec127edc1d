"""What a detector trains on: the images and annotations of a dataset (:func:`training_set`), its
items as tensors (:class:`DetectionImages`) and each process's batches of an epoch
(:func:`epoch_batches`).

Annotations with masks train everything; box-only annotations train the box branch and are left
out of the mask loss (``has_mask``); crowd regions are skipped; an image that holds any
image-level label (``il``/``ilc``: no box) is left out, since its unlabelled instances would
teach "background". ``only_valid`` drops annotations whose ``wsis.valid`` is false (the hybrid
paper's large branch trains on valid GrabCut masks only).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsis_cli.coco import Dataset, supervision_level
from wsis_cli.engine.loop import FailedSample
from wsis_cli.engine.rng import keyed_rng
from wsis_cli.errors import WsisError
from wsis_cli.images import check_images, image_path, read_sized_image

__all__ = ["TrainSet", "training_set", "check_validation_set", "DetectionImages", "collate_detection", "epoch_batches", "SAMPLE", "ORDER",
           "TORCH"]

SAMPLE, ORDER, TORCH = range(3)  # independent random streams: per-image draws, the epoch's order, torch's seed


@dataclass
class TrainSet:
    """What training reads: per image its file, size and instances (boxes xyxy, label indices
    1..K, which have masks, and the annotations to rasterise)."""

    ds: Dataset
    images: list[dict]
    paths: list[Path]
    anns: list[list[dict]]
    category_ids: list[int]
    skipped: dict[str, int]

    def fingerprint(self) -> str:
        rows = [[im["id"], im["file_name"], [[a.get("id"), a["category_id"], a.get("bbox"), "segmentation" in a]
                                              for a in anns]] for im, anns in zip(self.images, self.anns)]
        return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def training_set(ds: Dataset, images_dir: str | os.PathLike, *, only_valid: bool = False,
                 boxes_only: bool = False) -> TrainSet:
    """Pick the images and annotations a detector trains on (see the module docstring)."""
    skipped = {"crowd": 0, "invalid": 0, "degenerate_box": 0, "image_level_images": 0}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in ds.images}
    weak_images: set[int] = set()
    for a in ds.annotations:
        level = supervision_level(a)
        if level in ("il", "ilc"):
            weak_images.add(a["image_id"])
            continue
        if a.get("iscrowd"):
            skipped["crowd"] += 1
            continue
        if only_valid and isinstance(a.get("wsis"), dict) and a["wsis"].get("valid") is False:
            skipped["invalid"] += 1
            continue
        x, y, w, h = a["bbox"] if a.get("bbox") is not None else (0, 0, 0, 0)
        if w < 1 or h < 1:
            skipped["degenerate_box"] += 1
            continue
        by_image[a["image_id"]].append(a)
    images = [im for im in ds.images if im["id"] not in weak_images]
    skipped["image_level_images"] = len(ds.images) - len(images)
    if not images:
        raise WsisError(f"{ds.path}: no image to train on (images with image-level labels only are left out: "
                        "a detector needs boxes or masks)")
    if not ds.categories:
        raise WsisError(f"{ds.path}: has no categories")
    anns = [by_image[im["id"]] for im in images]
    if not any(anns):
        raise WsisError(f"{ds.path}: no annotation with a box or mask to train on")
    if not boxes_only and not any("segmentation" in a and a["segmentation"] for al in anns for a in al):
        raise WsisError(f"{ds.path}: no annotation has a mask; give --boxes-only to train a detector, or make masks "
                        "first (wsis pseudolabel grabcut)")
    paths = [image_path(images_dir, im, dataset=ds.path) for im in images]
    check_images(images, paths, ds.path)  # a broken file fails now, not hours into training
    return TrainSet(ds, images, paths, anns, [c["id"] for c in ds.categories], skipped)


class DetectionImages(torch.utils.data.Dataset):
    """Item ``(index, epoch)`` -> ``(FloatTensor[3, H, W] in 0..1, target dict)``; flipped
    horizontally when the draw for ``(seed, epoch, index)`` says so."""

    def __init__(self, data: TrainSet, *, seed: int, flip: bool, masks: bool):
        self.data, self.seed, self.flip, self.masks = data, seed, flip, masks
        self.label = {c: k + 1 for k, c in enumerate(data.category_ids)}

    def __len__(self) -> int:
        return len(self.data.images)

    def __getitem__(self, key: tuple[int, int]):
        from wsis_cli.coco import rle_to_mask

        index, epoch = key
        im, anns = self.data.images[index], self.data.anns[index]
        try:
            rgb = read_sized_image(self.data.paths[index], im, self.data.ds.path)
            h, w = rgb.shape[:2]
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=np.float32).reshape(-1, 4)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            has = np.array([bool(a.get("segmentation")) for a in anns], dtype=bool)
            masks = np.zeros((len(anns), h, w), dtype=np.uint8) if self.masks else None
            if self.masks:
                for j, a in enumerate(anns):
                    if has[j]:
                        masks[j] = rle_to_mask(self.data.ds.rle(a))
        except WsisError as e:
            return FailedSample(str(e))
        if self.flip and keyed_rng(self.seed, epoch, index, SAMPLE).random() < 0.5:
            rgb = rgb[:, ::-1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
            if masks is not None:
                masks = masks[:, :, ::-1]
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        target = {"boxes": torch.from_numpy(boxes[keep]),
                  "labels": torch.tensor([self.label[a["category_id"]] for a in anns], dtype=torch.int64)[
                      torch.from_numpy(keep)]}
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks[keep]))
            target["has_mask"] = torch.from_numpy(has[keep])
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
        return x, target


def collate_detection(items: list) -> tuple[list, list]:
    """``(images, targets)`` lists of a batch (detection models take lists, not stacks)."""
    return [x for x, _ in items], [t for _, t in items]


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's batches of one epoch: a permutation for ``(seed, epoch)``, padded (from its
    start) to a multiple of ``world``, every ``world``-th index from ``rank``, cut into batches."""
    order = keyed_rng(seed, epoch, 0, ORDER).permutation(n).tolist()
    if world > 1 and len(order) % world:
        order = (order * world)[: -(-len(order) // world) * world]  # cyclic, also when n < world
    mine = order[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def check_validation_set(vds: Dataset, images_dir: str | os.PathLike, category_ids: list[int]) -> None:
    """Fail before training, not after the first epoch, on a validation set that cannot be scored."""
    if [c["id"] for c in vds.categories] != list(category_ids):
        raise WsisError(f"{vds.path}: its categories {[c['id'] for c in vds.categories]} are not the training "
                        f"set's {list(category_ids)}; --val needs the same label set")
    if not vds.images:
        raise WsisError(f"{vds.path}: has no images to validate on")
    for im in vds.images:
        image_path(images_dir, im, dataset=vds.path)
