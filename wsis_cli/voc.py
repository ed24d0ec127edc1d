"""PASCAL VOC 2012 and SBD instance annotations -> COCO instances.

Two layouts are recognised under ``root``:

- VOC 2012: ``JPEGImages/<id>.jpg``, ``SegmentationObject/<id>.png`` (instance index per pixel),
  ``SegmentationClass/<id>.png`` (class index per pixel), optional ``Annotations/<id>.xml``, and
  the split list ``ImageSets/Segmentation/<split>.txt``. Both PNGs use VOC's palette (or plain
  8-bit indices); 255 is *void* (object borders, ambiguous pixels) and belongs to no mask.
- SBD: ``img/<id>.jpg``, ``inst/<id>.mat`` (``GTinst.Segmentation``, ``GTinst.Categories``) and
  ``<split>.txt``, directly under ``root`` or under ``root/dataset``.

Instance ``i`` of an image is the pixels with index ``i`` in the instance map; its class is the
class map's value there (VOC) or ``Categories[i-1]`` (SBD). Image ids ``2007_000032`` become
``2007000032``; ``file_name`` is relative to the JPEG folder.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import numpy as np

from wsis_cli.boxes import mask_to_box, xyxy_to_xywh
from wsis_cli.coco import mask_to_rle
from wsis_cli.errors import InputError, WsisError

__all__ = ["VOC_CLASSES", "voc_colormap", "read_index_png", "convert_voc"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
VOID = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """VOC's palette (n, 3) uint8: index -> RGB, the bit-interleaved map of the devkit."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


_KEY_TO_INDEX = {int(r) << 16 | int(g) << 8 | int(b): i for i, (r, g, b) in enumerate(voc_colormap())}


def read_index_png(path: Path) -> np.ndarray:
    """An index PNG (VOC palette or plain 8-bit grey) -> ``HxW`` uint8 indices."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError(path, "not a PNG OpenCV can decode")
    if raw.ndim == 2:
        if raw.dtype != np.uint8:
            raise InputError(path, f"index PNG must be 8-bit, got {raw.dtype}")
        return raw
    rgb = raw[:, :, 2::-1].astype(np.int64)  # OpenCV expands palettes to BGR(A)
    keys = rgb[:, :, 0] << 16 | rgb[:, :, 1] << 8 | rgb[:, :, 2]
    uniq, inv = np.unique(keys, return_inverse=True)
    lut = np.empty(len(uniq), dtype=np.uint8)
    for k, key in enumerate(uniq):
        if int(key) not in _KEY_TO_INDEX:
            rgb_s = (int(key) >> 16, int(key) >> 8 & 255, int(key) & 255)
            raise InputError(path, f"colour {rgb_s} is not in VOC's palette; expected a VOC index PNG")
        lut[k] = _KEY_TO_INDEX[int(key)]
    return lut[inv.reshape(keys.shape)]


def _image_id(stem: str, fallback: int) -> int:
    return int(stem.replace("_", "")) if re.fullmatch(r"\d{4}_\d{6}", stem) else fallback


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise WsisError(f"{path}: split list not found")
    try:
        return [ln.split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise InputError(path, "not a text file of image names") from None


def _sbd_root(root: Path) -> Path | None:
    for cand in (root, root / "dataset"):
        if (cand / "inst").is_dir() and (cand / "img").is_dir():
            return cand
    return None


def _voc_instances(root: Path, stem: str) -> tuple[int, int, list[tuple[int, np.ndarray]]]:
    obj_png = root / "SegmentationObject" / f"{stem}.png"
    cls_png = root / "SegmentationClass" / f"{stem}.png"
    for p in (obj_png, cls_png):
        if not p.is_file():
            raise InputError(p, f"missing (image {stem} is in the split list)")
    obj, cls = read_index_png(obj_png), read_index_png(cls_png)
    if obj.shape != cls.shape:
        raise InputError(cls_png, f"size {cls.shape[::-1]} differs from {obj_png.name}'s {obj.shape[::-1]}")
    xml = root / "Annotations" / f"{stem}.xml"
    if xml.is_file():
        try:
            size = ET.parse(xml).getroot().find("size")
            w, h = (int(size.findtext("width", "0")), int(size.findtext("height", "0"))) if size is not None else (0, 0)
        except ET.ParseError as e:
            raise InputError(xml, f"not valid XML: {e}") from None
        except ValueError:
            raise InputError(xml, "<size> width/height are not integers") from None
        if size is not None:
            if (w, h) != (obj.shape[1], obj.shape[0]):
                raise InputError(xml, f"size {w}x{h} differs from the segmentation's {obj.shape[1]}x{obj.shape[0]}")
    out = []
    for idx in np.unique(obj):
        if idx in (0, VOID):
            continue
        m = obj == idx
        labels = cls[m]
        labels = labels[(labels != 0) & (labels != VOID)]
        if labels.size == 0:
            raise InputError(obj_png, f"instance {idx} has no class in {cls_png.name}")
        c = int(np.bincount(labels).argmax())
        if not 1 <= c <= len(VOC_CLASSES):
            raise InputError(cls_png, f"class index {c} under instance {idx} is not a VOC class (1..20)")
        out.append((c, m))
    return obj.shape[0], obj.shape[1], out


def _sbd_instances(root: Path, stem: str) -> tuple[int, int, list[tuple[int, np.ndarray]]]:
    from scipy.io import loadmat

    mat = root / "inst" / f"{stem}.mat"
    if not mat.is_file():
        raise InputError(mat, f"missing (image {stem} is in the split list)")
    try:
        gt = loadmat(str(mat), squeeze_me=True, struct_as_record=False)["GTinst"]
        seg = np.asarray(gt.Segmentation)
        cats = np.atleast_1d(np.asarray(gt.Categories)).astype(int)
    except Exception as e:  # scipy raises MatReadError, ValueError, TypeError... on a bad file
        raise InputError(mat, f"not an SBD GTinst file ({type(e).__name__}: {e})") from None
    if seg.ndim != 2:
        raise InputError(mat, f"GTinst.Segmentation must be a 2-D array, got shape {seg.shape}")
    out = []
    for idx in np.unique(seg):
        if idx in (0, VOID):
            continue
        if idx > len(cats):
            raise InputError(mat, f"instance {idx} has no entry in GTinst.Categories ({len(cats)} entries)")
        c = int(cats[idx - 1])
        if not 1 <= c <= len(VOC_CLASSES):
            raise InputError(mat, f"instance {idx} has class {c}, not a VOC class (1..20)")
        out.append((c, seg == idx))
    return seg.shape[0], seg.shape[1], out


def convert_voc(root: str | os.PathLike, *, split: str = "train",
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Convert the ``split`` of a VOC 2012 or SBD tree to a COCO instances dict."""
    root = Path(root)
    if not root.is_dir():
        raise WsisError(f"{root}: not a folder")
    sbd = _sbd_root(root)
    if sbd is not None:
        stems = _read_split(sbd / f"{split}.txt")
        reader, img_dir, base = _sbd_instances, sbd / "img", sbd
    elif (root / "SegmentationObject").is_dir():
        stems = _read_split(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        reader, img_dir, base = _voc_instances, root / "JPEGImages", root
    else:
        raise WsisError(f"{root}: neither a VOC 2012 tree (SegmentationObject/, JPEGImages/) "
                        "nor an SBD tree (inst/, img/)")
    images, annotations, ids = [], [], set()
    for n, stem in enumerate(stems, start=1):
        image_id = _image_id(stem, n)
        if image_id in ids:
            raise WsisError(f"{root}: image {stem} is listed twice in the {split} split")
        ids.add(image_id)
        jpg = img_dir / f"{stem}.jpg"
        if not jpg.is_file():
            raise InputError(jpg, f"missing (image {stem} is in the split list)")
        h, w, instances = reader(base, stem)
        images.append({"id": image_id, "file_name": jpg.name, "width": int(w), "height": int(h)})
        for c, m in instances:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": c,
                "segmentation": mask_to_rle(m), "area": float(m.sum()),
                "bbox": [float(v) for v in xyxy_to_xywh(mask_to_box(m)[None])[0]], "iscrowd": 0,
            })
        if progress:
            progress(n, len(stems))
    kind = "SBD" if sbd is not None else "PASCAL VOC 2012"
    return {
        "info": {"description": f"{kind} {split} split, converted by wsis", "images_dir": str(img_dir)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "voc"} for i, n in enumerate(VOC_CLASSES)],
    }
