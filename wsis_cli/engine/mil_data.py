"""The MIL branch's data: the bags of a ``pseudolabel bags`` dataset, per image, as tensors.

A bag is a non-crowd annotation with a non-empty ``wsis.bag`` (``[[x, y, w, h], ...]``); its
label is its category, as a column of the dataset's categories. All bags of an image travel
together (one pass of the trunk). An image is fed as a square of ``size`` px (as the classifier
is, :func:`wsis_cli.models.classifier.image_tensor`), its boxes scaled to match; in training it
is flipped left-right with probability 0.5, drawn from the generator keyed by ``(seed, epoch,
index)``, so an item is the same in any process and after ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsis_cli.boxes import xywh_to_xyxy
from wsis_cli.coco import Dataset, ann_record
from wsis_cli.engine.loop import FailedSample
from wsis_cli.engine.rng import keyed_rng
from wsis_cli.errors import InputError, WsisError
from wsis_cli.images import image_path, read_image
from wsis_cli.models.classifier import image_tensor

__all__ = ["ImageBags", "image_bags", "bags_fingerprint", "image_input", "BagImages", "collate_bags"]

_FLIP = 0  # the keyed stream of the flip draw


@dataclass
class ImageBags:
    """One image's bags: ``boxes[i]`` float64 (k_i, 4) ``x1, y1, x2, y2`` in image px, ``classes[i]``
    the column of bag ``i``'s category, ``anns[i]`` its annotation record."""

    image: dict
    path: Path
    anns: list[dict]
    boxes: list[np.ndarray]
    classes: list[int]


def _bag_boxes(ds: Dataset, a: dict) -> np.ndarray:
    bag = (a.get("wsis") or {}).get("bag")
    if bag is None:
        raise InputError(ds.path, "has no 'wsis.bag' (make the bags with `wsis pseudolabel bags`)", ann_record(a))
    ok = isinstance(bag, list) and all(isinstance(b, list) and len(b) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b) for b in bag)
    if not ok or any(b[2] < 0 or b[3] < 0 for b in bag):
        raise InputError(ds.path, "'wsis.bag' must be a list of [x, y, w, h] boxes (finite, w, h >= 0)",
                         ann_record(a))
    return xywh_to_xyxy(np.asarray(bag, dtype=np.float64).reshape(-1, 4))


def image_bags(ds: Dataset, images_dir) -> list[ImageBags]:
    """The images that hold a non-empty bag, in dataset order, each with its bags (annotation
    order). An annotation without ``wsis.bag``, or with a malformed one, is an InputError; an
    empty bag is skipped."""
    col = {c["id"]: k for k, c in enumerate(ds.categories)}
    out = []
    for im in ds.images:
        anns, boxes, classes = [], [], []
        for a in ds.anns_by_image[im["id"]]:
            if a.get("iscrowd"):
                continue
            b = _bag_boxes(ds, a)
            if len(b):
                anns.append(a)
                boxes.append(b)
                classes.append(col[a["category_id"]])
        if anns:
            out.append(ImageBags(im, image_path(images_dir, im, dataset=ds.path), anns, boxes, classes))
    if not out:
        raise WsisError(f"{ds.path}: holds no non-empty bag (annotations with 'wsis.bag'); make them with "
                        "`wsis pseudolabel bags`")
    return out


def bags_fingerprint(items: list[ImageBags]) -> str:
    """What ``--resume`` compares: images, bag classes and boxes."""
    rows = [[it.image["id"], it.image["file_name"], it.classes, [np.round(b, 3).tolist() for b in it.boxes]]
            for it in items]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def image_input(rgb: np.ndarray, boxes: list[np.ndarray], size: int, *, flip: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(FloatTensor[3, size, size] in 0..1, per bag FloatTensor[k, 4] x1, y1, x2, y2 in its px)``:
    the image resized to the square (and mirrored with ``flip``), its boxes to match."""
    h, w = rgb.shape[:2]
    sx, sy = size / w, size / h
    out = []
    for b in boxes:
        b = np.asarray(b, dtype=np.float64) * [sx, sy, sx, sy]
        if flip:
            b = np.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], axis=1)
        out.append(torch.from_numpy(b.astype(np.float32)))
    return image_tensor(rgb[:, ::-1] if flip else rgb, size), out


class BagImages(torch.utils.data.Dataset):
    """Training items keyed by ``(index, epoch)``: ``(image FloatTensor[3, size, size], boxes per
    bag, LongTensor[bags] classes)``, the same for the same key in any process."""

    def __init__(self, items: list[ImageBags], *, size: int, seed: int, augment: bool = True):
        self.items, self.size, self.seed, self.augment = items, size, seed, augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        it = self.items[index]
        try:
            rgb = read_image(it.path)
        except WsisError as e:
            return FailedSample(f"{e} (image {it.image['id']})")
        if rgb.shape[:2] != (it.image["height"], it.image["width"]):
            return FailedSample(f"{it.path}: is {rgb.shape[1]}x{rgb.shape[0]} px but image {it.image['id']} says "
                                f"{it.image['width']}x{it.image['height']}")
        flip = self.augment and bool(keyed_rng(self.seed, epoch, index, _FLIP).random() < 0.5)
        x, boxes = image_input(rgb, it.boxes, self.size, flip=flip)
        return x, boxes, torch.tensor(it.classes, dtype=torch.long)


def collate_bags(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images FloatTensor[N, 3, S, S], rois FloatTensor[R, 5], bag LongTensor[R],
    classes LongTensor[B])`` for the bags of ``N`` images (bags numbered in item order)."""
    rois, bag, classes = [], [], []
    for i, (_, boxes, cls) in enumerate(items):
        for j, b in enumerate(boxes):
            rois.append(torch.cat([torch.full((len(b), 1), float(i)), b], dim=1))
            bag.append(torch.full((len(b),), len(classes), dtype=torch.long))
            classes.append(cls[j])
    return (torch.stack([x for x, _, _ in items]), torch.cat(rois), torch.cat(bag),
            torch.stack(classes) if classes else torch.zeros(0, dtype=torch.long))
