"""Synthetic instance segmentation data: textured shapes on textured backgrounds.

Each image holds 2–7 instances of up to four classes (disc, box, triangle, star). Each class
has its own shape, hue family and texture (rings, stripes, checks, dots), so both shape and
appearance identify it, as in real data. About a third of the instances are small (under
64×64 px at 256 px images), and some are placed touching an earlier one. Later instances
occlude earlier ones; the ground-truth masks are the visible parts, so instance masks never
overlap. Everything is deterministic for a seed, image by image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from wsis_cli.boxes import mask_to_box, xyxy_to_xywh
from wsis_cli.coco import mask_to_rle
from wsis_cli.errors import WsisError

__all__ = ["CLASSES", "make_image", "synthesize"]

# name, base RGB, texture
CLASSES = (
    ("disc", (220, 70, 50), "rings"),
    ("box", (50, 90, 220), "stripes"),
    ("triangle", (60, 190, 70), "checks"),
    ("star", (235, 200, 40), "dots"),
)
MIN_VISIBLE_PX = 12
MAX_SIZE = 4096  # px a side: larger synthetic pictures teach nothing and can exhaust memory
MAX_IMAGES = 1_000_000


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    coarse = rng.uniform(70, 170, size=(6, 6, 3)).astype(np.float32)
    grey = coarse.mean(axis=2, keepdims=True)
    coarse = 0.55 * grey + 0.45 * coarse  # muted colours, so objects stand out by hue
    bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 18, size=(size, size)).astype(np.float32), (0, 0), 1.5)
    return bg + fine[:, :, None]


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float,
                aspect: float) -> np.ndarray:
    import cv2

    m = np.zeros((size, size), dtype=np.uint8)
    c, s = np.cos(angle), np.sin(angle)

    def pts(xy: np.ndarray) -> np.ndarray:
        xy = xy * np.array([r, r * aspect])
        rot = np.stack([xy[:, 0] * c - xy[:, 1] * s, xy[:, 0] * s + xy[:, 1] * c], axis=1)
        return np.round((rot + [cx, cy]) * 16).astype(np.int32)  # 4 fractional bits

    if kind == "disc":
        cv2.ellipse(m, (int(cx * 16), int(cy * 16)), (int(r * 16), int(r * aspect * 16)),
                    np.degrees(angle), 0, 360, 1, -1, cv2.LINE_8, 4)
    elif kind == "box":
        cv2.fillPoly(m, [pts(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85)], 1, cv2.LINE_8, 4)
    elif kind == "triangle":
        t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        cv2.fillPoly(m, [pts(np.stack([np.cos(t), np.sin(t)], 1))], 1, cv2.LINE_8, 4)
    else:  # star
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        cv2.fillPoly(m, [pts(np.stack([np.cos(t) * rad, np.sin(t) * rad], 1))], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def _texture(kind: str, rng: np.random.Generator, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = max(3.0, r / rng.uniform(1.5, 3.0))
    if kind == "rings":
        t = np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) / period)
    elif kind == "stripes":
        a = rng.uniform(0, np.pi)
        t = np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)
    elif kind == "checks":
        t = np.sign(np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)) * 0.8
    else:
        t = (np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)) ** 2 * 2 - 1
    return t


def make_image(rng: np.random.Generator, *, size: int = 256, n_classes: int = 4,
               max_instances: int = 7) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One synthetic image ``HxWx3`` uint8 and its instances ``[(class_index, HxW bool mask)]``."""
    import cv2

    img = _background(rng, size)
    n = int(rng.integers(2, max_instances + 1))
    owner = np.full((size, size), -1, dtype=np.int32)
    placed: list[tuple[int, float, float, float]] = []  # class, cx, cy, r
    for _ in range(n):
        cls = int(rng.integers(n_classes))
        small = rng.random() < 0.3
        r = size * (rng.uniform(0.025, 0.06) if small else rng.uniform(0.15, 0.27))
        for _attempt in range(20):
            if placed and rng.random() < 0.35:  # touch an earlier instance
                _, px, py, pr = placed[int(rng.integers(len(placed)))]
                a = rng.uniform(0, 2 * np.pi)
                d = (pr + r) * rng.uniform(0.8, 0.95)
                cx, cy = px + d * np.cos(a), py + d * np.sin(a)
            else:
                cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            shape = _shape_mask(CLASSES[cls][0], size, cx, cy, r, rng.uniform(0, np.pi),
                                rng.uniform(0.7, 1.0) if CLASSES[cls][0] != "star" else 1.0)
            area = shape.sum()
            if area < MIN_VISIBLE_PX:
                continue
            if (owner[shape] >= 0).sum() <= 0.25 * area:
                break
        else:
            continue
        base = np.array(CLASSES[cls][1], np.float32) * rng.uniform(0.8, 1.1, size=3)
        tex = _texture(CLASSES[cls][2], rng, size, cx, cy, r)
        fill = base[None, None, :] * (0.78 + 0.22 * tex[:, :, None])
        img[shape] = fill[shape]
        owner[shape] = len(placed)
        placed.append((cls, cx, cy, r))

    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    instances = []
    for idx, (cls, *_rest) in enumerate(placed):
        m = owner == idx
        if m.sum() >= MIN_VISIBLE_PX:
            instances.append((cls, m))
    return rgb, instances


def synthesize(out_dir: str | os.PathLike, *, n: int = 200, size: int = 256, seed: int = 0,
               n_classes: int = 4, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``out_dir/images/*.png`` and return the COCO dataset dict (the caller writes it).
    A folder that holds a set already is refused unless ``overwrite`` (then its images go first).

    Image ``i`` is drawn from ``np.random.default_rng([seed, i])``, so any slice of a set can be
    remade alone and a larger ``n`` extends a smaller one.
    """
    from wsis_cli.images import write_image

    if not 1 <= n <= MAX_IMAGES:
        raise WsisError(f"--n must be between 1 and {MAX_IMAGES}, got {n}")
    if not 32 <= size <= MAX_SIZE:
        raise WsisError(f"--size must be between 32 and {MAX_SIZE} px, got {size}")
    if not 1 <= n_classes <= len(CLASSES):
        raise WsisError(f"--classes must be between 1 and {len(CLASSES)}, got {n_classes}")
    img_dir = Path(out_dir) / "images"
    old = sorted(img_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")) if img_dir.is_dir() else []
    if (old or (Path(out_dir) / "gt.json").exists()) and not overwrite:
        raise WsisError(f"{out_dir}: holds a dataset already (gt.json, images/); add --overwrite to replace it")
    for f in old:  # a smaller set must not leave the larger one's images behind
        f.unlink()
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        rgb, instances = make_image(rng, size=size, n_classes=n_classes)
        image_id = i + 1
        name = f"{image_id:06d}.png"
        write_image(img_dir / name, rgb)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for cls, mask in instances:
            box = xyxy_to_xywh(mask_to_box(mask)[None])[0]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                "segmentation": mask_to_rle(mask), "area": float(mask.sum()),
                "bbox": [float(v) for v in box], "iscrowd": 0,
            })
        if progress:
            progress(i + 1, n)
    return {
        "info": {"description": f"wsis synthetic shapes, {n} images of {size}px, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": CLASSES[k][0], "supercategory": "shape"} for k in range(n_classes)],
    }
