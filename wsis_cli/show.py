"""Pictures of labels, for checking pseudo-labels by eye.

:func:`render_overlay` draws one image's annotations: masks filled in per-instance colours with
a solid outline, boxes, class names; masks that are a fallback (``wsis.method`` other than
``grabcut``, or ``wsis.valid`` false) are hatched, outlined with dashes and tagged with their
method, so they stand out. Image-level labels are listed at the top. :func:`contact_sheet`
tiles many overlays into one picture.
"""

from __future__ import annotations

import colorsys

import numpy as np

from wsis_cli.coco import has_segmentation, rle_to_mask, segm_to_rle

__all__ = ["instance_colour", "render_overlay", "contact_sheet", "is_fallback", "show_dataset"]


def instance_colour(i: int) -> tuple[int, int, int]:
    """Well-separated RGB colours for instance indices 0, 1, 2, ... (golden-ratio hues)."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def is_fallback(ann: dict) -> bool:
    w = ann.get("wsis") or {}
    return bool(w) and (w.get("valid") is False or w.get("method") not in (None, "grabcut"))


def _dashed(img: np.ndarray, contours, colour, thickness: int, dash: int = 4) -> None:
    import cv2

    for c in contours:
        pts = c.reshape(-1, 2)
        for k in range(0, len(pts), 2 * dash):
            seg = pts[k:k + dash + 1]
            if len(seg) > 1:
                cv2.polylines(img, [seg.reshape(-1, 1, 2)], False, colour, thickness, cv2.LINE_AA)


def render_overlay(rgb: np.ndarray, anns: list[dict], categories: dict[int, dict], *, min_side: int = 384) -> np.ndarray:
    """The image (upscaled to at least ``min_side`` px on its longer side) with ``anns`` drawn."""
    import cv2

    h, w = rgb.shape[:2]
    s = max(1, int(np.ceil(min_side / max(h, w))))
    canvas = cv2.resize(rgb, (w * s, h * s), interpolation=cv2.INTER_NEAREST) if s > 1 else rgb.copy()
    base = canvas.copy()
    image_labels = []
    for i, a in enumerate(anns):
        colour = instance_colour(i)
        name = categories.get(a["category_id"], {}).get("name", str(a["category_id"]))
        fallback = is_fallback(a)
        if has_segmentation(a):
            m = rle_to_mask(segm_to_rle(a["segmentation"], h, w))
            if s > 1:
                m = cv2.resize(m.astype(np.uint8), (w * s, h * s), interpolation=cv2.INTER_NEAREST).astype(bool)
            fill = m.copy()
            if fallback:  # hatched: every other diagonal band
                yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
                fill &= ((xx + yy) // max(3, 3 * s)) % 2 == 0
            canvas[fill] = (0.45 * base[fill] + 0.55 * np.array(colour)).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            if fallback:
                _dashed(canvas, contours, (255, 255, 255), max(1, s))
            else:
                cv2.drawContours(canvas, contours, -1, colour, max(1, s), cv2.LINE_AA)
        if a.get("bbox") is not None:
            x, y, bw, bh = (v * s for v in a["bbox"])
            cv2.rectangle(canvas, (int(round(x)), int(round(y))), (int(round(x + bw)) - 1, int(round(y + bh)) - 1),
                          colour, 1, cv2.LINE_AA)
            label = name + (f" ({(a.get('wsis') or {}).get('method', 'fallback')})" if fallback else "")
            _text(canvas, label, int(round(x)), max(10, int(round(y)) - 3), colour)
        elif not has_segmentation(a):
            count = "?" if a.get("count", 0) is None else a.get("count", 1)
            image_labels.append((name, count))
    if image_labels:
        merged: dict[str, object] = {}
        for name, c in image_labels:
            merged[name] = "?" if c == "?" or merged.get(name) == "?" else int(merged.get(name, 0)) + int(c)
        _text(canvas, ", ".join(f"{n} x{c}" for n, c in merged.items()), 3, 12, (255, 255, 255))
    return canvas


def _text(img: np.ndarray, text: str, x: int, y: int, colour) -> None:
    import cv2

    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)


def contact_sheet(tiles: list[tuple[str, np.ndarray]], *, cell: int = 256, cols: int | None = None) -> np.ndarray:
    """Captioned thumbnails in a grid: ``tiles`` = ``[(caption, HxWx3 uint8)]``."""
    import cv2

    if not tiles:
        return np.zeros((cell, cell, 3), np.uint8)
    cols = cols or int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    sheet = np.full((rows * (cell + 16), cols * cell, 3), 32, np.uint8)
    for k, (caption, img) in enumerate(tiles):
        h, w = img.shape[:2]
        f = cell / max(h, w)
        th, tw = max(1, int(h * f)), max(1, int(w * f))
        thumb = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_NEAREST)
        r, c = divmod(k, cols)
        y0, x0 = r * (cell + 16), c * cell
        sheet[y0:y0 + th, x0:x0 + tw] = thumb
        _text(sheet, caption, x0 + 3, y0 + cell + 12, (230, 230, 230))
    return sheet


def show_dataset(ds, images: list[dict], images_dir, out_dir, *, progress=None) -> int:
    """Write ``<image id>.png`` overlays of ``images`` (records of ``ds``) and ``contact_sheet.png``
    into ``out_dir``; every image file is checked before the first is drawn. Returns how many
    fallback masks were drawn hatched."""
    from pathlib import Path

    from wsis_cli.images import check_images, image_path, read_sized_image, write_image

    paths = [image_path(images_dir, im, dataset=ds.path) for im in images]  # all there before any drawing
    check_images(images, paths, ds.path)  # and of the sizes the dataset says: masks must fit them
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiles, n_fallback = [], 0
    for k, (im, path) in enumerate(zip(images, paths), start=1):
        anns = ds.anns_by_image[im["id"]]
        n_fallback += sum(is_fallback(a) for a in anns)
        pic = render_overlay(read_sized_image(path, im, ds.path), anns, ds.category_by_id)
        write_image(out_dir / f"{im['id']}.png", pic)
        tiles.append((f"{im['id']}: {len(anns)}", pic))
        if progress:
            progress(k, len(images))
    write_image(out_dir / "contact_sheet.png", contact_sheet(tiles))
    return n_fallback
