"""One pseudo-label type: what every pseudo-labeller returns, and the one writer to COCO JSON.

:class:`PseudoLabels` holds ``N`` instance masks made from weak labels, column by column (numpy
at the core, as :class:`wsis_cli.detections.Detections` does for a model's output), with the
weak dataset they came from, the image records they cover, a summary and the provenance record.
Labellers build it row by row from :class:`Instance` (:meth:`PseudoLabels.from_instances`); it is
validated when made.

The writer (:func:`to_record`, used by :meth:`PseudoLabels.record` and
:meth:`PseudoLabels.to_dataset`) turns each row into a COCO annotation record, the only place
where pseudo-label records are built:

1. ``id`` first, unless the row's ``fields`` carry one (a record kept in place keeps its order);
2. the row's ``fields`` (other JSON fields: a weak record's own fields, ``iscrowd``, ``point``)
   in their order, except the extra names that ``layout`` places;
3. in ``layout`` order: ``id``, ``image_id``, ``category_id``, ``bbox`` (``x, y, w, h`` rounded
   to ``bbox_decimals``), ``segmentation`` (compressed RLE), ``area``, ``score`` and ``iou``
   (rounded to 6 decimals; only when given), ``wsis`` (the record's own ``wsis`` when its fields
   carry one, then ``"method"``, then the row's ``wsis`` entries), and any other name from the
   row's fields. A key the record holds already keeps its place.

A row whose method is ``"kept"`` (a full annotation or a crowd region passed through) is written
as its fields hold it, ``id`` first unless they carry one, with an ``area`` appended when it has
none and the row knows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from wsis_cli.boxes import xyxy_to_xywh
from wsis_cli.coco import Dataset, mask_to_rle

__all__ = ["METHODS", "LAYOUT", "Instance", "PseudoLabels", "coco_bbox", "to_record"]

METHODS = ("grabcut", "ellipse", "box", "none", "prm", "ccgr", "net", "kept")
LAYOUT = ("id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd", "score", "iou", "wsis")
_COLUMNS = frozenset({"id", "image_id", "category_id", "bbox", "segmentation", "area", "score", "iou", "wsis"})


def coco_bbox(box, decimals: int | None) -> list[float]:
    """One ``x1, y1, x2, y2`` box as the JSON ``[x, y, w, h]``, rounded to ``decimals`` (None: not)."""
    xywh = xyxy_to_xywh(np.asarray(box, dtype=np.float64)[None])[0]
    return [float(v) if decimals is None else round(float(v), decimals) for v in xywh]


@dataclass
class Instance:
    """One pseudo-label as a labeller makes it; :class:`PseudoLabels` describes the fields.
    ``box`` None and ``mask`` None are allowed for a ``"kept"`` record only."""

    id: int
    image_id: int
    category_id: int
    box: Any = None
    mask: dict | None = None
    area: float | None = None
    score: float | None = None
    iou: float | None = None
    method: str = "kept"
    valid: bool = True
    wsis: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)

    @classmethod
    def from_mask(cls, mask: np.ndarray, **kwargs: Any) -> "Instance":
        """A row from an ``HxW`` bool mask: stored as compressed RLE, with its pixel count as area."""
        return cls(mask=mask_to_rle(mask), area=float(mask.sum()), **kwargs)


def _floats(values, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} rows, expected {n}")
    return arr


@dataclass
class PseudoLabels:
    """``N`` pseudo-labelled instances over ``images``.

    ``ids``, ``image_ids``, ``category_ids``: int64 (N,) (annotation, image and category ids);
    ``boxes``: float64 (N, 4) ``x1, y1, x2, y2`` in pixels (a NaN row: a kept record without a
    box); ``masks``: N compressed RLEs ``{"size": [h, w], "counts": str}`` (None: a kept record
    without a mask); ``areas``: float64 (N,) mask pixels (NaN: not known, kept records only);
    ``scores``, ``ious``: float64 (N,) (NaN: none given); ``methods``: how each mask was made
    (:data:`METHODS`); ``valid``: bool (N,), the mask passed its labeller's validity rule;
    ``wsis``: per row, the provenance written after ``"method"`` (``box_iou``, ``peak``,
    ``box_before``, ``source`` ...); ``fields``: per row, the other JSON fields. ``source`` is the
    weak dataset (categories, info and licenses are carried over), ``summary`` the labeller's
    counts, ``provenance`` the ``info.wsis`` record, ``bbox_decimals`` and ``layout`` shape the
    JSON (see the module docstring).
    """

    source: Dataset
    images: list[dict]
    ids: np.ndarray
    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    masks: list
    areas: np.ndarray
    scores: np.ndarray
    ious: np.ndarray
    methods: list
    valid: np.ndarray
    wsis: list
    fields: list
    summary: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    bbox_decimals: int | None = 6
    layout: tuple = LAYOUT

    def __post_init__(self) -> None:
        n = len(np.asarray(self.ids).reshape(-1))
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64).reshape(-1)
        self.category_ids = np.asarray(self.category_ids, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.areas = _floats(self.areas, n, "areas")
        self.scores = _floats(self.scores, n, "scores")
        self.ious = _floats(self.ious, n, "ious")
        self.valid = np.asarray(self.valid, dtype=bool).reshape(-1)
        self.masks, self.methods = list(self.masks), list(self.methods)
        self.wsis, self.fields, self.layout = list(self.wsis), list(self.fields), tuple(self.layout)
        for name in ("image_ids", "category_ids", "boxes", "valid", "masks", "methods", "wsis", "fields"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n}")
        if len(set(self.ids.tolist())) != n:
            raise ValueError("annotation ids repeat")
        sizes = {im["id"]: [im["height"], im["width"]] for im in self.images}
        for i in range(n):
            self._check_row(i, sizes)

    def _check_row(self, i: int, sizes: dict) -> None:
        where = f"annotation {self.ids[i]} (image {self.image_ids[i]})"
        kept = self.methods[i] == "kept"
        if self.methods[i] not in METHODS:
            raise ValueError(f"{where}: method must be one of {', '.join(METHODS)}, got {self.methods[i]!r}")
        if int(self.image_ids[i]) not in sizes:
            raise ValueError(f"{where}: its image is not among the images")
        b = self.boxes[i]
        if not (kept and np.isnan(b).all()) and not (np.isfinite(b).all() and b[2] >= b[0] and b[3] >= b[1]):
            raise ValueError(f"{where}: box must be finite x1, y1, x2, y2 with x2 >= x1, y2 >= y1, got {b.tolist()}")
        m = self.masks[i]
        if m is None and not kept:
            raise ValueError(f"{where}: has no mask")
        if m is not None and not (isinstance(m, dict) and isinstance(m.get("counts"), str)
                                  and list(m.get("size", ())) == sizes[int(self.image_ids[i])]):
            raise ValueError(f"{where}: mask must be a compressed RLE of its image's size "
                             f"{sizes[int(self.image_ids[i])]}")
        a = self.areas[i]
        if not ((kept and np.isnan(a)) or (np.isfinite(a) and a >= 0)):
            raise ValueError(f"{where}: area must be a finite number >= 0, got {a}")
        for name in ("scores", "ious"):
            if np.isinf(getattr(self, name)[i]):
                raise ValueError(f"{where}: {name[:-1]} must be finite or NaN (none)")
        if not isinstance(self.wsis[i], dict) or not isinstance(self.fields[i], dict):
            raise ValueError(f"{where}: wsis and fields must be dicts")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_instances(cls, instances: Iterable[Instance], *, source: Dataset, images: list[dict],
                       **kwargs: Any) -> "PseudoLabels":
        """Stack rows into columns; ``kwargs``: ``summary``, ``provenance``, ``bbox_decimals``, ``layout``."""
        rows = list(instances)
        nan = float("nan")
        return cls(source=source, images=images, ids=[r.id for r in rows], image_ids=[r.image_id for r in rows],
                   category_ids=[r.category_id for r in rows],
                   boxes=np.array([[nan] * 4 if r.box is None else np.asarray(r.box, np.float64) for r in rows],
                                  dtype=np.float64).reshape(-1, 4),
                   masks=[r.mask for r in rows], areas=[nan if r.area is None else r.area for r in rows],
                   scores=[nan if r.score is None else r.score for r in rows],
                   ious=[nan if r.iou is None else r.iou for r in rows], methods=[r.method for r in rows],
                   valid=[r.valid for r in rows], wsis=[r.wsis for r in rows], fields=[r.fields for r in rows],
                   **kwargs)

    def __getitem__(self, i: int) -> Instance:
        """Row ``i`` as an :class:`Instance` (None for NaN values)."""
        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        box = None if np.isnan(self.boxes[i]).all() else self.boxes[i].copy()
        return Instance(id=int(self.ids[i]), image_id=int(self.image_ids[i]), category_id=int(self.category_ids[i]),
                        box=box, mask=self.masks[i], area=num(self.areas[i]), score=num(self.scores[i]),
                        iou=num(self.ious[i]), method=self.methods[i], valid=bool(self.valid[i]), wsis=self.wsis[i],
                        fields=self.fields[i])

    def mask(self, i: int) -> np.ndarray | None:
        """Row ``i``'s mask as ``HxW`` bool (None: a kept record without one)."""
        from wsis_cli.coco import rle_to_mask

        return None if self.masks[i] is None else rle_to_mask(self.masks[i])

    def record(self, i: int) -> dict:
        """Row ``i`` as a COCO annotation record (:func:`to_record`)."""
        return to_record(self[i], bbox_decimals=self.bbox_decimals, layout=self.layout)

    def records(self) -> list[dict]:
        return [self.record(i) for i in range(len(self))]

    def to_dataset(self) -> Dataset:
        """The COCO dataset: ``images``, the records, the source's categories and licenses, and its
        ``info`` with ``"wsis"`` set to :attr:`provenance`."""
        return replace(self.source, images=self.images, annotations=self.records(),
                       info={**self.source.info, "wsis": self.provenance})

    def to_json(self) -> dict:
        return self.to_dataset().to_json()


def to_record(inst: Instance, *, bbox_decimals: int | None = 6, layout: tuple = LAYOUT) -> dict:
    """One pseudo-label as a COCO annotation record (the rules are in the module docstring): the
    one place where pseudo-label records are built."""
    own = inst.fields
    rec: dict = {} if "id" in own else {"id": int(inst.id)}
    if inst.method == "kept":
        rec.update(own)
        if "area" not in rec and inst.area is not None:
            rec["area"] = float(inst.area)
        return rec
    rec.update((k, v) for k, v in own.items() if k in _COLUMNS or k not in layout)
    for key in layout:
        if key not in _COLUMNS:
            if key in own:
                rec[key] = own[key]
        elif key in ("id", "image_id", "category_id"):
            rec[key] = int(getattr(inst, key))
        elif key == "bbox":
            rec[key] = coco_bbox(inst.box, bbox_decimals)
        elif key == "segmentation":
            rec[key] = inst.mask
        elif key == "area":
            rec[key] = float(inst.area)
        elif key in ("score", "iou"):
            if getattr(inst, key) is not None:
                rec[key] = round(float(getattr(inst, key)), 6)
        else:  # wsis: the record's own, then the method, then the row's
            rec[key] = {**(own.get("wsis") or {}), "method": inst.method, **inst.wsis}
    return rec
