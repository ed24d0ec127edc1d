"""Class-level training labels for the segmenter, from any COCO dataset.

An image's label map is ``uint8 (H, W)`` at the image's resolution: ``0`` background, ``k + 1``
the dataset's ``k``-th category (``ds.categories`` order), :data:`IGNORE` (255) no loss. Rules
(2 paints; 3 to 7 only turn pixels to IGNORE, so their order does not matter):

1. every pixel starts as background;
2. each non-crowd instance mask paints its class;
3. a pixel inside masks of two different classes is ignored (the masks disagree);
4. a pixel inside an instance's bbox but outside every mask of the image is ignored (pseudo
   masks are often partial: what the box holds besides them is unknown);
5. a band around each mask's border is ignored: pixels within ``w`` px of it on either side, with
   ``w = max(1, round(BAND * sqrt(mask area)))`` (as PASCAL VOC's void border), none for masks
   under ``MIN_BAND_AREA`` px (it would erase them);
6. crowd regions and box-only annotations (bbox, no mask) are ignored over their box;
7. a class labelled on the image (an annotation with no bbox and no mask: IL, IL+C) but with no
   mask or box there is somewhere unknown, so the image's background is unknown: every pixel not
   painted by a mask is ignored; so too when the image-level labels count more instances of a
   class than the image has masks and boxes of it (pseudo-labels short of their count: the
   missed instances are somewhere in the "background").

:func:`with_image_labels` joins the image-level labels of the same images (the file the pseudo-
labels were made from) to a pseudo-labelled dataset as label-only annotations, so that rule 7
sees what the pseudo-labeller missed.

Images whose annotations are all label-only (IL, IL+C) teach nothing pixel-wise and are left out
of training (:func:`training_images` says how many). An image without annotations is a negative:
all background (with :func:`with_image_labels`, only when its image-level labels are empty too).

Training items are keyed by ``(index, epoch)``: the random draws (horizontal flip, scale jitter
and its crop or pad offset) come from ``keyed_rng(seed, epoch, index, stream)``, so an item is the
same in any process and across ``--resume``. The image is resized to a square of ``--size`` px
(area or bilinear interpolation), the label map with nearest neighbour.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from wsis_cli.coco import Dataset, has_segmentation, labels_of, rle_to_mask
from wsis_cli.engine.loop import FailedSample
from wsis_cli.engine.rng import keyed_rng
from wsis_cli.errors import InputError, WsisError
from wsis_cli.images import read_sized_image

__all__ = ["IGNORE", "BAND", "SCALE_RANGE", "label_map", "band_width", "training_images", "resize_pair",
           "augment_pair", "SegmentationImages", "with_image_labels"]

IGNORE = 255
BAND = 0.05               # border band half-width, as a fraction of sqrt(mask area)
MIN_BAND_AREA = 64        # masks smaller than this (px) get no band
SCALE_RANGE = (0.75, 1.25)  # scale jitter: the image is resized to size * s, then cropped or padded to size
_SAMPLE = 0  # keyed_rng stream of the per-item draws


def band_width(area: float) -> int:
    """The ignored band's half-width in px around a mask of ``area`` pixels: none under
    :data:`MIN_BAND_AREA` px (a band would erase a small object's label)."""
    if area < MIN_BAND_AREA:
        return 0
    return max(1, int(round(BAND * math.sqrt(area))))


def _box_slice(bbox, height: int, width: int) -> tuple[slice, slice]:
    """COCO ``[x, y, w, h]`` -> the rows and columns of the pixels it touches, clipped to the image."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(int(math.floor(x)), 0), max(int(math.floor(y)), 0)
    x2, y2 = min(int(math.ceil(x + w)), width), min(int(math.ceil(y + h)), height)
    return slice(y1, max(y1, y2)), slice(x1, max(x1, x2))


def _band(mask: np.ndarray, w: int) -> np.ndarray:
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * w + 1, 2 * w + 1))
    m = mask.astype(np.uint8)
    # erode with a border of ones: the image edge is not the mask's border
    inner = cv2.erode(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return cv2.dilate(m, kernel).astype(bool) & ~inner.astype(bool)


def label_map(ds: Dataset, image: dict) -> np.ndarray:
    """``uint8 (H, W)`` class-level label map of ``image`` (a record of ``ds``) by the rules of
    the module docstring. InputError for a mask that does not decode."""
    h, w = image["height"], image["width"]
    col = {c["id"]: k + 1 for k, c in enumerate(ds.categories)}
    anns = ds.anns_by_image[image["id"]]
    label = np.zeros((h, w), dtype=np.uint8)
    painted = np.zeros((h, w), dtype=np.uint8)  # the class of the first mask over each pixel
    conflict = np.zeros((h, w), dtype=bool)
    masks, boxes, ignore_boxes = [], [], []
    located, labelled = set(), set()
    found: dict[int, int] = {}
    for a in anns:
        labelled.add(a["category_id"])
        has_mask, has_box = has_segmentation(a), a.get("bbox") is not None
        if (has_mask or has_box) and not a.get("iscrowd"):
            found[a["category_id"]] = found.get(a["category_id"], 0) + 1
        if a.get("iscrowd"):
            ignore_boxes.append(a["bbox"] if has_box else _mask_box(rle_to_mask(ds.rle(a))))
            located.add(a["category_id"])
        elif has_mask:
            m = rle_to_mask(ds.rle(a))
            k = col[a["category_id"]]
            conflict |= m & (painted != 0) & (painted != k)
            painted[m & (painted == 0)] = k
            masks.append(m)
            boxes.append(a["bbox"] if has_box else _mask_box(m))
            located.add(a["category_id"])
        elif has_box:
            ignore_boxes.append(a["bbox"])
            located.add(a["category_id"])
    label[:] = painted
    union = painted != 0
    expected = labels_of([a for a in anns if not (has_segmentation(a) or a.get("bbox") is not None)])
    short = any(n is not None and found.get(c, 0) < n for c, n in expected.items())
    if labelled - located or short:  # rule 7: a class (or an instance of one) somewhere unknown
        label[~union] = IGNORE
    label[conflict] = IGNORE
    for bbox in boxes:
        rows, cols = _box_slice(bbox, h, w)
        label[rows, cols][~union[rows, cols]] = IGNORE
    for m in masks:
        if band_width(float(m.sum())):
            label[_band(m, band_width(float(m.sum())))] = IGNORE
    for bbox in ignore_boxes:
        rows, cols = _box_slice(bbox, h, w)
        label[rows, cols] = IGNORE
    return label


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def with_image_labels(ds: Dataset, labels: Dataset) -> Dataset:
    """``ds`` with the label-only annotations of ``labels`` (IL or IL+C labels of the same images,
    matched by image id; images ``ds`` does not hold are not added) joined to its images, ids after
    ``ds``'s; ``labels``'s boxes and masks are not taken (only what they name counts)."""
    from dataclasses import replace

    next_id = max((int(a["id"]) for a in ds.annotations), default=0) + 1
    extra = []
    for a in labels.annotations:
        if a.get("iscrowd") or a["image_id"] not in ds.image_by_id:
            continue
        rec = {"id": next_id, "image_id": a["image_id"], "category_id": a["category_id"]}
        if "count" in a:
            rec["count"] = a["count"]
        extra.append(rec)
        next_id += 1
    return replace(ds, annotations=[*ds.annotations, *extra])


def training_images(ds: Dataset) -> tuple[list[int], int]:
    """``(indices into ds.images that train, how many were left out)``: an image is left out when
    it has annotations and all of them are label-only (no bbox, no mask)."""
    keep, skipped = [], 0
    for i, im in enumerate(ds.images):
        anns = ds.anns_by_image[im["id"]]
        if anns and not any(has_segmentation(a) or a.get("bbox") is not None for a in anns):
            skipped += 1
        else:
            keep.append(i)
    return keep, skipped


def resize_pair(rgb: np.ndarray, label: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` and ``label`` resized to ``side x side`` (area interpolation when shrinking, bilinear
    when enlarging; the labels nearest-neighbour)."""
    import cv2

    h, w = label.shape
    if (h, w) == (side, side):
        return rgb, label
    interp = cv2.INTER_AREA if side <= h and side <= w else cv2.INTER_LINEAR
    return (cv2.resize(rgb, (side, side), interpolation=interp),
            cv2.resize(label, (side, side), interpolation=cv2.INTER_NEAREST))


def augment_pair(rgb: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator, *, flip: bool = True,
                 scale_jitter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One training view at ``size x size``: with ``scale_jitter`` the pair is resized to ``round(size
    * s)``, ``s`` drawn from :data:`SCALE_RANGE`, then a ``size`` window is cut at a drawn offset
    (a smaller view is padded: image 0, label :data:`IGNORE`); with ``flip`` it is mirrored with
    probability 0.5. The same draws are made whatever the options, so a key means one view."""
    s = float(rng.uniform(*SCALE_RANGE))
    oy, ox = rng.random(2)
    mirror = rng.random() < 0.5
    side = max(8, int(round(size * s))) if scale_jitter else size
    rgb, label = resize_pair(rgb, label, side)
    if side != size:
        out_rgb = np.zeros((size, size, 3), dtype=np.uint8)
        out_label = np.full((size, size), IGNORE, dtype=np.uint8)
        n = min(side, size)
        sy, sx = int(oy * (side - n + 1)) if side > size else 0, int(ox * (side - n + 1)) if side > size else 0
        dy, dx = int(oy * (size - n + 1)) if size > side else 0, int(ox * (size - n + 1)) if size > side else 0
        out_rgb[dy:dy + n, dx:dx + n] = rgb[sy:sy + n, sx:sx + n]
        out_label[dy:dy + n, dx:dx + n] = label[sy:sy + n, sx:sx + n]
        rgb, label = out_rgb, out_label
    if flip and mirror:
        rgb, label = rgb[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(label)


class SegmentationImages(torch.utils.data.Dataset):
    """Training samples of ``ds``'s images (``paths`` in ``ds.images`` order): an item is addressed by
    ``(index, epoch)`` and is ``(FloatTensor[3, size, size] in 0..1, LongTensor[size, size] labels)``,
    the same for the same key in any process. An unreadable image comes back as a
    :class:`~wsis_cli.engine.loop.FailedSample`."""

    def __init__(self, ds: Dataset, paths: list[Path], *, size: int, seed: int, flip: bool = True,
                 scale_jitter: bool = True):
        self.ds, self.paths = ds, [str(p) for p in paths]
        self.size, self.seed, self.flip, self.scale_jitter = size, seed, flip, scale_jitter

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        im = self.ds.images[index]
        try:
            rgb = read_sized_image(self.paths[index], im, self.ds.path)
            label = label_map(self.ds, im)
        except InputError as e:  # names its file and record already
            return FailedSample(str(e))
        except WsisError as e:
            return FailedSample(f"{e} (image {im['id']} of {self.ds.path})")
        rgb, label = augment_pair(rgb, label, self.size, keyed_rng(self.seed, epoch, index, _SAMPLE), flip=self.flip,
                                  scale_jitter=self.scale_jitter)
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        return x, torch.from_numpy(label).long()
