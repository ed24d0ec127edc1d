"""One image's detections as numpy arrays: what a trained model returns, what fusion, pseudo-labels
and ``score-iou`` consume, and how they become COCO results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Detections", "to_results"]


@dataclass
class Detections:
    """``N`` detections of one ``height`` x ``width`` image.

    ``boxes`` float32 (N, 4) ``x1, y1, x2, y2`` in pixels; ``scores`` float32 (N,);
    ``category_ids`` int64 (N,) (dataset category ids, not model label indices);
    ``masks`` bool (N, H, W) or None (a box-only model); ``ious`` float32 (N,) predicted mask IoU
    or None (no IoU head).
    """

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    height: int
    width: int
    masks: np.ndarray | None = None
    ious: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.category_ids = np.asarray(self.category_ids, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.category_ids) != n:
            raise ValueError("boxes, scores and category_ids must have one length")
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool).reshape(n, self.height, self.width)
        if self.ious is not None:
            self.ious = np.asarray(self.ious, dtype=np.float32).reshape(n)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, height: int, width: int, *, masks: bool = True, ious: bool = False) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), height, width,
                   masks=np.zeros((0, height, width), bool) if masks else None,
                   ious=np.zeros(0, np.float32) if ious else None)

    def take(self, index) -> "Detections":
        """The detections at ``index`` (an int array or a bool mask), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64).reshape(-1)
        return Detections(self.boxes[index], self.scores[index], self.category_ids[index], self.height, self.width,
                          masks=None if self.masks is None else self.masks[index],
                          ious=None if self.ious is None else self.ious[index])

    @staticmethod
    def concat(parts: list["Detections"]) -> "Detections":
        """Detections of one image from several sources (all with masks, or all without)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        h, w = parts[0].height, parts[0].width
        has_masks = all(p.masks is not None for p in parts)
        has_ious = all(p.ious is not None for p in parts)
        return Detections(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                          np.concatenate([p.category_ids for p in parts]), h, w,
                          masks=np.concatenate([p.masks for p in parts]) if has_masks else None,
                          ious=np.concatenate([p.ious for p in parts]) if has_ious else None)


def to_results(image_id: int, det: Detections) -> list[dict]:
    """COCO results records (``image_id, category_id, bbox`` as xywh, ``score``, compressed-RLE
    ``segmentation`` when there are masks, ``iou`` when the model predicts it), best score first."""
    from wsis_cli.coco import mask_to_rle, rle_to_json

    out = []
    for i in np.argsort(-det.scores, kind="stable"):
        x1, y1, x2, y2 = (float(v) for v in det.boxes[i])
        rec = {"image_id": int(image_id), "category_id": int(det.category_ids[i]),
               "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
               "score": round(float(det.scores[i]), 6)}
        if det.masks is not None:
            rec["segmentation"] = rle_to_json(mask_to_rle(det.masks[i]))
        if det.ious is not None:
            rec["iou"] = round(float(det.ious[i]), 6)
        out.append(rec)
    return out
