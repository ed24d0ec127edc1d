"""What a detector trains on: the images and annotations of a dataset (:func:`training_set`), its
items as tensors (:class:`DetectionImages`) and each process's batches of an epoch
(:func:`epoch_batches`).

Annotations with masks train everything; box-only annotations train the box branch and are left
out of the mask loss (``has_mask``), unless the model trains them with BoxInst's box terms
(``box_loss="boxinst"``, which also lets a dataset of boxes alone train a Mask R-CNN). An
annotation whose mask decodes to no pixel is never trained as an empty mask: it trains as a
box-only annotation, and a warning counts it (:attr:`TrainSet.notes`). Crowd regions are skipped;
an image that holds any image-level label (``il``/``ilc``: no box) is left out, since its
unlabelled instances would teach "background".

GrabCut pseudo-labels carry ``wsis.valid``. ``only_valid`` trains on the others than those whose
``wsis.valid`` is false (the hybrid paper's large branch: valid masks), ``only_invalid`` on the
others than those whose ``wsis.valid`` is true (its small branch: the boxes whose masks failed).
The instances left out become ignore regions (``target["ignore"]``), not background: the object
is there, only its label is not trusted, so anchors and proposals on it get no loss (see
:mod:`wsis_cli.models.rpn`). An image whose every instance is ignored still trains: its background
elsewhere is real. Annotations without ``wsis.valid`` are not GrabCut pseudo-labels (human boxes
or masks): both options keep them, and ``only_invalid`` says how many it kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsis_cli.boxes import xywh_to_xyxy
from wsis_cli.coco import Dataset, ann_record, has_segmentation, supervision_level
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
    1..K, which have masks, and the annotations to rasterise; an annotation with an empty mask is
    here as a copy without its segmentation), the annotations whose boxes are ignore regions
    (``ignore``, per image; empty lists when none), what was not taken as given (``skipped``:
    counts by reason) and the lines that say so (``notes``: ``(text, is_warning)``)."""

    ds: Dataset
    images: list[dict]
    paths: list[Path]
    anns: list[list[dict]]
    category_ids: list[int]
    skipped: dict[str, int]
    ignore: list[list[dict]] = field(default_factory=list)
    notes: list[tuple[str, bool]] = field(default_factory=list)

    def fingerprint(self) -> str:
        rows = [[im["id"], im["file_name"], [[a.get("id"), a["category_id"], a.get("bbox"), "segmentation" in a]
                                              for a in anns]] for im, anns in zip(self.images, self.anns)]
        if any(self.ignore):  # runs without ignore regions keep the fingerprint they always had
            rows.append([[a.get("id"), a.get("bbox")] for ig in self.ignore for a in ig])
        return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def _flag(a: dict) -> bool | None:
    """The annotation's ``wsis.valid`` (None without one)."""
    w = a.get("wsis")
    return w.get("valid") if isinstance(w, dict) and isinstance(w.get("valid"), bool) else None


def _empty_mask(ds: Dataset, a: dict) -> bool:
    """Whether the annotation's segmentation decodes to no pixel (its ``area`` field is not trusted)."""
    from pycocotools import mask as mask_utils

    return has_segmentation(a) and int(mask_utils.area(ds.rle(a))) == 0


def _pick(ds: Dataset, only_valid: bool, only_invalid: bool):
    """Sort the annotations: ``(kept per image, ignored per image, weak image ids, skipped counts,
    the records of the empty masks, how many kept annotations lack wsis.valid)``."""
    skipped = {"crowd": 0, "degenerate_box": 0, "image_level_images": 0, "invalid": 0, "valid": 0, "empty_mask": 0}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in ds.images}
    ignore: dict[int, list[dict]] = {im["id"]: [] for im in ds.images}
    weak_images: set[int] = set()
    empty, unflagged = [], 0
    for a in ds.annotations:
        if supervision_level(a) in ("il", "ilc"):
            weak_images.add(a["image_id"])
            continue
        if a.get("iscrowd"):
            skipped["crowd"] += 1
            continue
        x, y, w, h = a["bbox"] if a.get("bbox") is not None else (0, 0, 0, 0)
        if w < 1 or h < 1:
            skipped["degenerate_box"] += 1
            continue
        flag = _flag(a)
        if (only_valid and flag is False) or (only_invalid and flag is True):
            skipped["valid" if flag else "invalid"] += 1
            ignore[a["image_id"]].append(a)
            continue
        unflagged += flag is None
        if _empty_mask(ds, a):
            empty.append(ann_record(a))
            a = {k: v for k, v in a.items() if k != "segmentation"}  # a copy: the dataset stays as it is
            skipped["empty_mask"] += 1
        by_image[a["image_id"]].append(a)
    return by_image, ignore, weak_images, skipped, empty, unflagged


def _notes(ds: Dataset, skipped: dict[str, int], empty: list[str], unflagged: int | None) -> list[tuple[str, bool]]:
    """The lines that tell the user what :func:`training_set` did not take as given."""
    notes = [(f"left out {n} {what.replace('_', ' ')}{'' if what.endswith('images') else ' annotations'}", False)
             for what in ("crowd", "degenerate_box", "image_level_images") if (n := skipped[what])]
    for flag, option in (("invalid", "--only-valid"), ("valid", "--only-invalid")):
        if skipped[flag]:
            notes.append((f"{option}: {skipped[flag]} annotations with wsis.valid {str(flag == 'valid').lower()} are "
                          "ignore regions (no loss near them, not background)", False))
    if unflagged:
        notes.append((f"--only-invalid: kept {unflagged} annotations without wsis.valid (not GrabCut pseudo-labels)",
                      False))
    if empty:
        notes.append((f"{ds.path}: {len(empty)} annotations have an empty mask (0 pixels; the first: {empty[0]}); "
                      "they train as box-only annotations, not as empty masks", True))
    return notes


def training_set(ds: Dataset, images_dir: str | os.PathLike, *, only_valid: bool = False, only_invalid: bool = False,
                 boxes_only: bool = False, box_loss: str = "none") -> TrainSet:
    """Pick the images and annotations a detector trains on and the ignore regions (see the module
    docstring). A dataset without masks needs ``boxes_only`` (a Faster R-CNN) or a ``box_loss``
    other than ``"none"`` (masks from boxes)."""
    if only_valid and only_invalid:
        raise WsisError("--only-valid and --only-invalid exclude each other (the large branch trains on valid "
                        "masks, the small one on the invalid ones); give one")
    by_image, ignore, weak_images, skipped, empty, unflagged = _pick(ds, only_valid, only_invalid)
    images = [im for im in ds.images if im["id"] not in weak_images]
    skipped["image_level_images"] = len(ds.images) - len(images)
    if not images:
        raise WsisError(f"{ds.path}: no image to train on (images with image-level labels only are left out: "
                        "a detector needs boxes or masks)")
    if not ds.categories:
        raise WsisError(f"{ds.path}: has no categories")
    anns = [by_image[im["id"]] for im in images]
    if not any(anns):
        raise WsisError(f"{ds.path}: no annotation with a box or mask to train on"
                        f"{' (every one is an ignore region)' if any(ignore.values()) else ''}")
    if not boxes_only and box_loss == "none" and not any(has_segmentation(a) for al in anns for a in al):
        raise WsisError(f"{ds.path}: no annotation has a mask{' that is not empty' if empty else ''}; give "
                        "--boxes-only to train a detector, --box-loss boxinst to train masks from the boxes, or "
                        "make masks first (wsis pseudolabel grabcut)")
    paths = [image_path(images_dir, im, dataset=ds.path) for im in images]
    check_images(images, paths, ds.path)  # a broken file fails now, not hours into training
    notes = _notes(ds, skipped, empty, unflagged if only_invalid else None)
    return TrainSet(ds, images, paths, anns, [c["id"] for c in ds.categories], skipped,
                    [ignore[im["id"]] for im in images], notes)


def _xyxy(anns: list[dict], w: int, h: int) -> np.ndarray:
    """The annotations' boxes, x1, y1, x2, y2 clipped to the ``w x h`` image (float32[N, 4])."""
    boxes = xywh_to_xyxy([a["bbox"] for a in anns]).astype(np.float32)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def _sized(boxes: np.ndarray) -> np.ndarray:
    """Which boxes are at least 1 px wide and high (bool[N])."""
    return (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)


class DetectionImages(torch.utils.data.Dataset):
    """Item ``(index, epoch)`` -> ``(FloatTensor[3, H, W] in 0..1, target dict)``; flipped
    horizontally when the draw for ``(seed, epoch, index)`` says so. The target holds ``boxes``
    (FloatTensor[N, 4], x1, y1, x2, y2), ``labels`` (Int64Tensor[N], 1..K), ``ignore`` (FloatTensor[M,
    4], the ignore regions) and, with ``masks``, ``masks`` (UInt8Tensor[N, H, W]) and ``has_mask``
    (BoolTensor[N]; an annotation without a mask has an all-zero one)."""

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
            boxes = _xyxy(anns, w, h)
            ignore = _xyxy(self.data.ignore[index] if self.data.ignore else [], w, h)
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
            ignore[:, [0, 2]] = w - ignore[:, [2, 0]]
            if masks is not None:
                masks = masks[:, :, ::-1]
        keep = _sized(boxes)
        target = {"boxes": torch.from_numpy(boxes[keep]),
                  "labels": torch.tensor([self.label[a["category_id"]] for a in anns], dtype=torch.int64)[
                      torch.from_numpy(keep)],
                  "ignore": torch.from_numpy(np.ascontiguousarray(ignore[_sized(ignore)]))}
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
