"""COCO JSON: load and validate datasets and results, masks <-> RLE, atomic writes.

A *dataset* is a dict with ``images``, ``annotations`` and ``categories``; a *results* list
holds detections ``{"image_id", "category_id", "score", "segmentation" and/or "bbox"}``.
Records stay plain dicts (the JSON is the interchange format); :class:`Dataset` adds lookups.

Supervision levels, recognised per annotation (:func:`supervision_level`):

=========  ==============================================================================
``full``   it has a non-empty ``segmentation`` (polygons, or RLE compressed or not)
``box``    it has a ``bbox`` but no segmentation
``ilc``    image-level label with counts: only ``category_id``, one annotation per instance
           (or, compactly, one per class with an integer ``"count": k``)
``il``     image-level label: one annotation per present class with ``"count": null``
=========  ==============================================================================
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from wsis_cli import __version__
from wsis_cli.errors import InputError, WsisError

__all__ = [
    "SUPERVISION_LEVELS",
    "Dataset",
    "read_json",
    "read_bytes",
    "write_json",
    "write_atomic",
    "load_dataset",
    "parse_dataset",
    "load_results",
    "parse_results",
    "supervision_level",
    "has_segmentation",
    "segm_to_rle",
    "rle_to_mask",
    "mask_to_rle",
    "rle_to_json",
    "provenance",
    "ann_record",
    "compress_masks",
    "fill_areas",
    "display_name",
    "load_predictions",
    "read_ids",
    "is_id",
]

SUPERVISION_LEVELS = ("full", "box", "ilc", "il")


# ----------------------------------------------------------------------------- JSON files
def read_bytes(path: str | os.PathLike, *, what: str = "a JSON file") -> bytes:
    """The bytes of an input file (``-``: stdin); a missing or unreadable one is an
    :class:`InputError` naming it."""
    name = display_name(path)
    try:
        if name == STDIN_NAME:
            return sys.stdin.buffer.read()
        with open(name, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError(name, "no such file") from None
    except IsADirectoryError:
        raise InputError(name, f"is a directory, expected {what}") from None
    except PermissionError:
        raise InputError(name, "permission denied") from None


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (``-`` reads stdin); faults become :class:`InputError`."""
    name = display_name(path)
    raw = read_bytes(path)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(name, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise InputError(name, "not valid JSON: not UTF-8 text") from None
    except RecursionError:
        raise InputError(name, "not valid JSON: nested too deeply") from None


STDIN_NAME = "<stdin>"


def display_name(path: str | os.PathLike) -> str:
    """How messages name an input: its path, or ``<stdin>`` for ``-``."""
    return STDIN_NAME if str(path) in ("-", STDIN_NAME) else str(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("ascii")
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """Write ``obj`` as JSON atomically (temp file in the same folder, then rename).

    ``-`` writes to stdout. A failure never leaves a half-written file at ``path``.
    """
    text = json.dumps(obj, default=_json_default, indent=indent, allow_nan=False)
    name = str(path)
    if name == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    target = Path(name)
    if target.exists() and not target.is_dir() and not target.is_file():  # /dev/null, a pipe: in place
        try:
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except OSError as e:
            raise WsisError(f"{name}: cannot write: {e.strerror or e}") from None
        return
    write_atomic(target, lambda fh: fh.write(text + "\n"), binary=False, what="an output file")


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(target: Path) -> int:
    """The mode an output gets: an existing file's own (a rewrite keeps it), else what the umask
    leaves of 0666, as ``open()`` would give (a temp file is created 0600)."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def write_atomic(path: str | os.PathLike, write: Any, *, binary: bool = True, what: str = "a file") -> None:
    """Call ``write(fh)`` on a temp file in ``path``'s folder, fsync it, then rename it to
    ``path``: a failure or a kill never leaves a half-written file there. OSErrors become
    one-line WsisErrors naming ``path``."""
    target = Path(path)
    if target.is_dir():
        raise WsisError(f"{target}: is a directory, expected {what} path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise WsisError(f"{target}: cannot write: {e.strerror or e}") from None
    try:
        os.fchmod(fd, _new_file_mode(target))
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise WsisError(f"{target}: cannot write: {e.strerror or e}") from None
        raise


def provenance(verb: str, options: dict | None = None, seed: int | None = None) -> dict:
    """The ``info.wsis`` record every output carries: version, verb, options, seed."""
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in (options or {}).items()}
    return {"version": __version__, "verb": verb, "options": opts, "seed": seed}


# ----------------------------------------------------------------------------- masks
def has_segmentation(ann: dict) -> bool:
    s = ann.get("segmentation")
    return bool(s) if isinstance(s, (list, dict)) else False


def segm_to_rle(segm: Any, height: int, width: int) -> dict:
    """Polygons / uncompressed RLE / compressed RLE -> one compressed RLE (pycocotools form,
    ``counts`` as bytes)."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        polys = [np.asarray(p, dtype=np.float64).tolist() for p in segm]
        rles = mask_utils.frPyObjects(polys, height, width)
        return mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, *segm["size"])
    counts = segm["counts"]
    return {"size": list(segm["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Compressed RLE (counts bytes or str) -> ``HxW`` bool."""
    from pycocotools import mask as mask_utils

    r = rle
    if isinstance(rle.get("counts"), str):
        r = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    elif isinstance(rle.get("counts"), list):
        r = mask_utils.frPyObjects(rle, *rle["size"])
    return mask_utils.decode(r).astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """``HxW`` bool mask -> JSON-ready compressed RLE ``{"size": [h, w], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle_to_json(rle)


def rle_to_json(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


# ----------------------------------------------------------------------------- validation
def supervision_level(ann: dict) -> str:
    """``full`` | ``box`` | ``ilc`` | ``il`` (see the module docstring)."""
    if has_segmentation(ann):
        return "full"
    if ann.get("bbox") is not None:
        return "box"
    if "count" in ann and ann["count"] is None:
        return "il"
    return "ilc"


def labels_of(anns: list[dict]) -> dict[int, int | None]:
    """``{category_id: count}`` of one image's annotations: a compact ``"count": k`` counts k, a
    ``"count": null`` (IL label) makes the class's count unknown (None), any other annotation
    (one per instance: IL+C, box or mask) counts 1. Crowd regions add no count."""
    counts: dict[int, int | None] = {}
    unknown: set[int] = set()
    for a in anns:
        c = a["category_id"]
        counts.setdefault(c, 0)
        if "count" in a:
            if a["count"] is None:
                unknown.add(c)
            else:
                counts[c] = (counts[c] or 0) + int(a["count"])
        elif not a.get("iscrowd"):
            counts[c] = (counts[c] or 0) + 1
        else:
            unknown.add(c)
    return {c: (None if c in unknown else n) for c, n in counts.items()}


def ann_record(ann: dict) -> str:
    """How an error names an annotation: ``annotation 17 (image 3)``."""
    return f"annotation {ann.get('id')} (image {ann.get('image_id')})"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_id(v: Any) -> bool:
    """An integer id that fits int64 (what numpy and pycocotools hold ids in)."""
    return _is_int(v) and -(2**63) <= v < 2**63


def rle_string_counts(counts: str) -> list[int] | None:
    """Decode pycocotools' compressed RLE string into run lengths; None when malformed."""
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None  # the string ends inside a number
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_bbox(bbox: Any, fail) -> None:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_num(v) for v in bbox):
        fail("bbox must be a list of 4 finite numbers [x, y, w, h]")
    if bbox[2] < 0 or bbox[3] < 0:
        fail(f"bbox {bbox} has negative width or height")


def _check_segmentation(segm: Any, height: int, width: int, fail) -> None:
    if isinstance(segm, list):
        for i, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
                fail(f"segmentation polygon {i} must be a list of finite numbers")
            if len(poly) < 6 or len(poly) % 2:
                fail(f"segmentation polygon {i} has {len(poly)} coordinates; "
                     "a polygon needs an even number, at least 6")
        return
    if not isinstance(segm, dict):
        fail("segmentation must be a list of polygons or an RLE object")
    size = segm.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        fail("RLE segmentation needs 'size': [height, width]")
    if size != [height, width]:
        fail(f"RLE size {size} does not match the image's [height, width] = [{height}, {width}]")
    counts = segm.get("counts")
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts):
            fail("uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            fail(f"uncompressed RLE counts sum to {sum(counts)}, expected height*width = {height * width}")
    elif not isinstance(counts, str) or not counts:
        fail("RLE 'counts' must be a non-empty string (compressed) or a list of integers")
    else:
        runs = rle_string_counts(counts)
        if runs is None or any(r < 0 for r in runs):
            fail("compressed RLE 'counts' is not a valid RLE string")
        if sum(runs) != height * width:
            fail(f"compressed RLE counts sum to {sum(runs)}, expected height*width = {height * width}")


def _check_wsis_block(block: Any, fail) -> None:
    """An annotation's ``wsis`` record (what wsis's pseudo-labellers add): an object whose
    ``valid`` is a boolean, ``method`` a string, ``box_iou`` a number in 0..1, ``box_before`` a
    box, when present."""
    if not isinstance(block, dict):
        fail("'wsis' must be an object (e.g. {\"method\": \"grabcut\", \"valid\": true})")
    if "valid" in block and not isinstance(block["valid"], bool):
        fail(f"'wsis.valid' must be true or false, got {block['valid']!r}")
    if "method" in block and not isinstance(block["method"], str):
        fail("'wsis.method' must be a string")
    if "box_iou" in block and not (_is_num(block["box_iou"]) and 0 <= block["box_iou"] <= 1):
        fail("'wsis.box_iou' must be a number in 0..1")
    if block.get("box_before") is not None:
        _check_bbox(block["box_before"], lambda msg: fail(f"'wsis.box_before': {msg}"))


@dataclass
class Dataset:
    """A validated COCO dataset. Records are the JSON dicts themselves."""

    images: list[dict]
    annotations: list[dict]
    categories: list[dict]
    info: dict = field(default_factory=dict)
    licenses: list = field(default_factory=list)
    path: str = "<memory>"

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        self.image_by_id = {im["id"]: im for im in self.images}
        self.category_by_id = {c["id"]: c for c in self.categories}
        self.anns_by_image: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for a in self.annotations:
            self.anns_by_image[a["image_id"]].append(a)

    def to_json(self, wsis: dict | None = None) -> dict:
        info = dict(self.info)
        if wsis is not None:
            info["wsis"] = wsis
        out: dict[str, Any] = {"info": info}
        if self.licenses:
            out["licenses"] = self.licenses
        out.update(images=self.images, annotations=self.annotations, categories=self.categories)
        return out

    def levels(self) -> dict[str, int]:
        """How many annotations there are of each supervision level."""
        counts = dict.fromkeys(SUPERVISION_LEVELS, 0)
        for a in self.annotations:
            counts[supervision_level(a)] += 1
        return counts

    def rle(self, ann: dict) -> dict:
        """The annotation's mask as compressed RLE (counts bytes); InputError if it has none
        or it does not decode."""
        im = self.image_by_id[ann["image_id"]]
        if not has_segmentation(ann):
            raise InputError(self.path, "has no segmentation", ann_record(ann))
        try:
            return segm_to_rle(ann["segmentation"], im["height"], im["width"])
        except (ValueError, TypeError, IndexError, KeyError) as e:
            raise InputError(self.path, f"segmentation does not decode: {e}", ann_record(ann)) from None

    def subset(self, image_ids: Iterable[int]) -> "Dataset":
        """A new dataset with the given images (in this dataset's order) and their annotations."""
        keep = set(image_ids)
        return replace(self, images=[im for im in self.images if im["id"] in keep],
                       annotations=[a for a in self.annotations if a["image_id"] in keep])


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read and validate a COCO dataset file (``-``: stdin); any fault raises :class:`InputError`."""
    return parse_dataset(read_json(path), path=display_name(path))


def parse_dataset(obj: Any, *, path: str = "<memory>") -> Dataset:
    """Validate a COCO dataset dict. Missing ``area`` on masked annotations is filled in from
    the mask (pycocotools needs it); missing ``iscrowd`` becomes 0."""
    if isinstance(obj, list):
        raise InputError(path, "is a COCO results list; a dataset (with 'images', 'annotations', "
                               "'categories') is needed here")
    if not isinstance(obj, dict):
        raise InputError(path, "a COCO dataset must be a JSON object")
    for key in ("images", "categories"):
        if not isinstance(obj.get(key), list):
            raise InputError(path, f"'{key}' must be a list")
    annotations = obj.get("annotations", [])
    if not isinstance(annotations, list):
        raise InputError(path, "'annotations' must be a list")

    images: dict[int, dict] = {}
    for i, im in enumerate(obj["images"]):
        rec = f"image {im.get('id')}" if isinstance(im, dict) else f"images[{i}]"

        def fail(msg: str, rec=rec):
            raise InputError(path, msg, rec)

        if not isinstance(im, dict):
            fail("must be an object")
        if not is_id(im.get("id")):
            fail("'id' must be an integer (int64)")
        if im["id"] in images:
            fail("duplicate image id")
        for k in ("width", "height"):
            if not _is_int(im.get(k)) or im[k] <= 0:
                fail(f"'{k}' must be a positive integer")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            fail("'file_name' must be a non-empty string")
        images[im["id"]] = im

    categories: dict[int, dict] = {}
    for i, c in enumerate(obj["categories"]):
        rec = f"category {c.get('id')}" if isinstance(c, dict) else f"categories[{i}]"
        if not isinstance(c, dict) or not is_id(c.get("id")):
            raise InputError(path, "'id' must be an integer (int64)", rec)
        if c["id"] in categories:
            raise InputError(path, "duplicate category id", rec)
        if not isinstance(c.get("name"), str):
            raise InputError(path, "'name' must be a string", rec)
        categories[c["id"]] = c

    seen: set[int] = set()
    for i, a in enumerate(annotations):
        if not isinstance(a, dict):
            raise InputError(path, "must be an object", f"annotations[{i}]")
        rec = ann_record(a)

        def fail(msg: str, rec=rec):
            raise InputError(path, msg, rec)

        if not is_id(a.get("id")):
            fail("'id' must be an integer (int64)")
        if a["id"] in seen:
            fail("duplicate annotation id")
        seen.add(a["id"])
        if not is_id(a.get("image_id")):
            fail("'image_id' must be an integer")
        im = images.get(a["image_id"])
        if im is None:
            fail("'image_id' names no image in the file")
        if not is_id(a.get("category_id")) or a["category_id"] not in categories:
            fail(f"'category_id' {a.get('category_id')!r} names no category in the file")
        if a.get("bbox") is not None:
            _check_bbox(a["bbox"], fail)
        segm = a.get("segmentation")
        if segm is not None and segm != [] and segm != {}:
            _check_segmentation(segm, im["height"], im["width"], fail)
        iscrowd = a.setdefault("iscrowd", 0)
        if not _is_int(iscrowd) or iscrowd not in (0, 1):
            fail("'iscrowd' must be 0 or 1")
        if "count" in a and a["count"] is not None and not (_is_int(a["count"]) and a["count"] >= 1):
            fail("'count' must be null (image-level label) or a positive integer")
        for k in ("area", "score"):
            if k in a and not (_is_num(a[k]) and a[k] >= 0):
                fail(f"'{k}' must be a finite number >= 0")
        if "wsis" in a:
            _check_wsis_block(a["wsis"], fail)
    if "licenses" in obj and not isinstance(obj["licenses"], list):
        raise InputError(path, "'licenses' must be a list")
    ds = Dataset(images=obj["images"], annotations=annotations, categories=obj["categories"],
                 info=obj.get("info") if isinstance(obj.get("info"), dict) else {},
                 licenses=obj.get("licenses") or [], path=path)
    return ds


def compress_masks(ds: Dataset) -> None:
    """Rewrite every segmentation (polygons, uncompressed RLE) as compressed RLE, in place."""
    for a in ds.annotations:
        if has_segmentation(a) and not (isinstance(a["segmentation"], dict)
                                        and isinstance(a["segmentation"].get("counts"), str)):
            a["segmentation"] = rle_to_json(ds.rle(a))


def fill_areas(ds: Dataset) -> None:
    """Give every annotation an ``area``: the mask's pixel count, else the box's w*h."""
    from pycocotools import mask as mask_utils

    for a in ds.annotations:
        if "area" in a:
            continue
        if has_segmentation(a):
            a["area"] = float(mask_utils.area(ds.rle(a)))
        elif a.get("bbox") is not None:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])


def load_results(path: str | os.PathLike) -> list[dict]:
    return parse_results(read_json(path), path=display_name(path))


def parse_results(obj: Any, *, path: str = "<memory>") -> list[dict]:
    """Validate a COCO results list (shape only; :func:`wsis_cli.metrics.evaluate` checks ids
    against the ground truth)."""
    if not isinstance(obj, list):
        raise InputError(path, "a COCO results file must be a JSON list of detections")
    for i, r in enumerate(obj):
        rec = f"result {i} (image {r.get('image_id')})" if isinstance(r, dict) else f"result {i}"

        def fail(msg: str, rec=rec):
            raise InputError(path, msg, rec)

        if not isinstance(r, dict):
            fail("must be an object")
        if not is_id(r.get("image_id")):
            fail("'image_id' must be an integer")
        if not is_id(r.get("category_id")):
            fail("'category_id' must be an integer")
        if not _is_num(r.get("score")):
            fail("'score' must be a finite number")
        if not has_segmentation(r) and r.get("bbox") is None:
            fail("needs a 'segmentation' or a 'bbox'")
        if r.get("bbox") is not None:
            _check_bbox(r["bbox"], fail)
        if has_segmentation(r) and not isinstance(r["segmentation"], (dict, list)):
            fail("segmentation must be a list of polygons or an RLE object")
    return obj


def load_predictions(path: str):
    """A results list or a dataset (pseudo-labels), validated for shape."""
    obj, name = read_json(path), display_name(path)
    return parse_results(obj, path=name) if isinstance(obj, list) else parse_dataset(obj, path=name)


def read_ids(path: str) -> list[int]:
    """Image ids from a file: a JSON list, a JSON object with 'image_ids' (what `select` writes)
    or 'images' (a dataset), or plain text with one id per line (commas and spaces also separate).
    An empty or unreadable list is an error, never an empty subset."""
    name = display_name(path)
    try:
        text = read_bytes(path, what="a file of image ids").decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(name, "not a text or JSON file of image ids") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = text.replace(",", " ").split()
    if isinstance(obj, dict):
        if isinstance(obj.get("image_ids"), list):
            obj = obj["image_ids"]
        elif isinstance(obj.get("images"), list):
            obj = [im.get("id") if isinstance(im, dict) else im for im in obj["images"]]
        else:
            raise InputError(name, "a JSON object of ids needs an 'image_ids' or 'images' list")
    if not isinstance(obj, list):
        obj = [obj]
    if not obj:
        raise InputError(name, "holds no image ids")
    ids = []
    for i, v in enumerate(obj):
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise InputError(name, f"{v!r} is not an image id", f"entry {i}")
        ids.append(v)
    return ids
