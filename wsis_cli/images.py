"""Image reading: any file OpenCV decodes -> ``HxWx3`` uint8 RGB.

Grey images are replicated to three channels, alpha is dropped, 16-bit images are scaled to
8 bits by their full range (65535 -> 255), and the EXIF orientation is applied, as a viewer
shows the picture (COCO's sizes are those of the shown picture).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from wsis_cli.errors import InputError, WsisError

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_sized_image", "write_image", "image_path", "folder_images",
           "image_size", "check_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@contextmanager
def _quiet_stderr():
    """Send what C libraries write to file descriptor 2 to /dev/null for a moment: the decoders
    report a broken file there before OpenCV returns None, and our own one-line error says it."""
    try:
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        sys.stderr.flush()
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as ``HxWx3`` uint8 RGB; :class:`WsisError` when it is missing or unreadable."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise WsisError(f"{p}: image file not found")
    data = np.fromfile(str(p), dtype=np.uint8)
    # IMREAD_COLOR applies the EXIF orientation, drops alpha and expands grey; ANYDEPTH keeps
    # 16 bits so we can scale them ourselves.
    with _quiet_stderr():  # libpng/libjpeg print their complaints about a broken file there
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise WsisError(f"{p}: not an image OpenCV can decode")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, ::-1])


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an ``HxWx3`` uint8 RGB (or ``HxW``) array atomically (a temp file, then rename: a
    full disk or a kill never leaves a truncated picture); the format follows the suffix."""
    import cv2

    from wsis_cli.coco import write_atomic

    arr = rgb[:, :, ::-1] if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(Path(path).suffix or ".png", np.ascontiguousarray(arr))
    if not ok:
        raise WsisError(f"{path}: could not encode image")
    write_atomic(path, lambda fh: fh.write(buf.tobytes()), what="an image file")


def image_path(images_dir: str | os.PathLike, image: dict, *, dataset: str | None = None) -> Path:
    """Where a COCO image record's file lies under ``images_dir``; with ``dataset`` (its name
    for messages), an :class:`InputError` when the file is not there."""
    p = Path(images_dir) / image["file_name"]
    if dataset is not None and not p.is_file():
        raise InputError(p, f"image file not found (image {image['id']} of {dataset})")
    return p


def read_sized_image(path: str | os.PathLike, image: dict, dataset: str | None = None) -> np.ndarray:
    """:func:`read_image`, and an :class:`InputError` when the file's size is not the one its
    record (``image``: ``id``, ``height``, ``width``) gives."""
    rgb = read_image(path)
    if rgb.shape[:2] != (image["height"], image["width"]):
        raise InputError(path, f"is {rgb.shape[1]}x{rgb.shape[0]} px but image {image['id']} of "
                               f"{dataset or 'the dataset'} says {image['width']}x{image['height']}")
    return rgb


def folder_images(images_dir: str | os.PathLike) -> list[dict]:
    """COCO image records for the image files directly in ``images_dir``, ids 1..N in sorted
    file-name order (what ``predict`` numbers images by when no dataset is given)."""
    files = sorted(p for p in Path(images_dir).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise WsisError(f"{images_dir}: holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for i, p in enumerate(files, start=1):
        h, w = read_image(p).shape[:2]
        out.append({"id": i, "file_name": p.name, "height": h, "width": w})
    return out


def image_size(path: str | os.PathLike) -> tuple[int, int, bool]:
    """``(width, height, sure)`` of the picture as shown, read from the file's header without
    decoding its pixels: the EXIF orientation is applied where the header holds it (JPEG, TIFF,
    WebP); elsewhere (``sure`` False) a viewer may still turn the picture by a later EXIF chunk.
    :class:`InputError` when the file is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
            sure = im.format in ("JPEG", "MPO", "TIFF", "WEBP")
            orientation = im.getexif().get(0x0112, 1) if sure else 1
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(path, "not an image file, its header cannot be read") from None
    return (height, width, sure) if orientation in (5, 6, 7, 8) else (width, height, sure)


def check_images(images: list[dict], paths: list[Path], dataset: str, *, sizes: bool = True) -> None:
    """Before a long job starts: every file is a readable image and, with ``sizes``, of the size
    its record says (one header read each, no decoding). The first fault is an :class:`InputError`."""
    for im, path in zip(images, paths):
        try:
            width, height, sure = image_size(path)
        except InputError as e:
            raise InputError(path, f"{e.problem} (image {im['id']} of {dataset})") from None
        if not sure and (width, height) == (im["height"], im["width"]):
            width, height = height, width  # perhaps turned by EXIF: the decode will tell
        if sizes and (height, width) != (im["height"], im["width"]):
            raise InputError(path, f"is {width}x{height} px but image {im['id']} of {dataset} says "
                                   f"{im['width']}x{im['height']}")
