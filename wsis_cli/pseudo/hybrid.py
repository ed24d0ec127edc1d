"""The hybrid-networks paper's two-branch fusion at test time (``wsis predict RUN/ --small-branch RUN2/``).

A *large* branch (a mask model trained on the valid GrabCut masks) and a *small* branch (a box
detector trained on the boxes whose GrabCut masks were invalid, its boxes turned into masks by
GrabCut with the ellipse fallback) predict on the same image; the fused result takes

- instances whose box area is below ``small_area`` (64×64 px) from class-wise NMS over the small
  detections of *both* branches (by score, IoU on boxes);
- instances at or above ``small_area`` from the large branch alone (the small branch's large
  detections are dropped).

The paper's split is on "size"; here it is the box area, which a box-only detection has before
it has a mask (so GrabCut need only run on the survivors, :func:`fuse_with_grabcut`).

Where the small branch's survivors get their masks (``rule``, :data:`RULES`):

- ``paper`` — GrabCut in the detected box, the ellipse inscribed in the box where GrabCut's mask
  is invalid (its own bbox has IoU < 0.5 with the box). The paper's rule.
- ``mask-head`` — the large branch's mask head run on the small branch's box and class (the
  "sequential" detection → segmentation of the small branch, with a learned segmenter in place of
  GrabCut). A detector's boxes are looser than annotated boxes, and GrabCut's validity test fails
  on loose boxes, so the paper's rule turns most of them into ellipses (issue 13: 603 of 648).
- ``valid-or-head`` — GrabCut's mask where it is valid, the mask head's where it is not (the
  ellipse is never used).

Predicted IoUs: the fused result carries ``ious`` only when both branches have them, never a mix
with placeholders (NaN has no place in JSON). Small-branch masks made by GrabCut have none, so
the paper's setting gives fused detections without ``ious``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wsis_cli.boxes import SMALL_AREA, box_area, nms
from wsis_cli.detections import Detections
from wsis_cli.pseudo.grabcut import GrabCutConfig, box_seed, segment_boxes

RULES = ("paper", "mask-head", "valid-or-head")  # where the small branch's survivors get their masks

__all__ = ["RULES", "Fused", "select_fused", "small_branch_masks", "fuse", "fuse_with_grabcut", "HybridFusion"]


def select_fused(large: Detections, small: Detections, *, small_area: float = SMALL_AREA,
                 nms_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Which detections of each branch the fusion keeps, on boxes and scores alone (masks are
    not looked at, so ``small`` may be a box-only detector's output).

    Returns ``(large_index, small_index)``, int64 indices into ``large`` and ``small``: every large-
    branch detection with box area >= ``small_area``, and the survivors of class-wise NMS
    (``nms_iou``) over both branches' detections with box area < ``small_area``. On equal
    scores a large-branch detection ranks before a small-branch one.
    """
    if (large.height, large.width) != (small.height, small.width):
        raise ValueError(f"the branches saw different image sizes: {large.width}x{large.height} "
                         f"and {small.width}x{small.height}")
    large_small = box_area(large.boxes) < small_area
    small_small = np.flatnonzero(box_area(small.boxes) < small_area)
    cand_large = np.flatnonzero(large_small)
    boxes = np.concatenate([large.boxes[cand_large], small.boxes[small_small]])
    scores = np.concatenate([large.scores[cand_large], small.scores[small_small]])
    cats = np.concatenate([large.category_ids[cand_large], small.category_ids[small_small]])
    kept = nms(boxes, scores, cats, iou_thr=nms_iou)
    n_large = len(cand_large)
    large_index = np.sort(np.concatenate([np.flatnonzero(~large_small), cand_large[kept[kept < n_large]]]))
    small_index = np.sort(small_small[kept[kept >= n_large] - n_large])
    return large_index.astype(np.int64), small_index.astype(np.int64)


def small_branch_masks(image: np.ndarray, det: Detections, cfg: GrabCutConfig,
                       seed: int) -> tuple[Detections, np.ndarray]:
    """Masks for a box-only detector's boxes: GrabCut in each box (:func:`segment_boxes`: crop
    with margin, validity rule, retry and ``cfg.fallback``, by default the ellipse inscribed in
    the box where the mask's own bbox has IoU < ``cfg.valid_iou`` with the box).

    ``image`` HxWx3 uint8 RGB, the image ``det`` was predicted on. Detection ``i`` reseeds
    OpenCV with ``box_seed(seed, i)``, so a box's mask depends only on ``(seed, i)``, the image
    and the box. Masks are not made disjoint (they are predictions, not training labels).

    Returns ``(detections, valid)``: ``det`` with full-size ``masks`` (N, H, W) (any masks it had
    are replaced) and no ``ious`` (a predicted IoU would not describe a GrabCut mask), and
    ``valid`` bool (N,): the GrabCut mask passed the validity rule (False: a fallback mask).
    """
    return _grabcut_rows(image, det, np.arange(len(det)), cfg, seed)


def _grabcut_rows(image: np.ndarray, det: Detections, seeds_from: np.ndarray, cfg: GrabCutConfig,
                  seed: int) -> tuple[Detections, np.ndarray]:
    h, w = det.height, det.width
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != (h, w):
        raise ValueError(f"image of shape {image.shape} does not match the detections' {w}x{h} (HxWx3 expected)")
    masks = np.zeros((len(det), h, w), dtype=bool)
    valid = np.zeros(len(det), dtype=bool)
    if len(det):
        boxes = np.clip(det.boxes.astype(np.float64), 0, [w, h, w, h])
        results = segment_boxes(image, boxes, [box_seed(seed, int(i)) for i in seeds_from], cfg)
        for i, r in enumerate(results):
            if r.mask is not None:
                (r0, c0), (mh, mw) = r.offset, r.mask.shape
                masks[i, r0:r0 + mh, c0:c0 + mw] = r.mask
            valid[i] = r.valid
    out = Detections(det.boxes, det.scores, det.category_ids, h, w, masks=masks, ious=None)
    return out, valid


def _by_score(det: Detections) -> np.ndarray:
    return np.argsort(-det.scores, kind="stable")


def fuse(large: Detections, small: Detections, *, small_area: float = SMALL_AREA, nms_iou: float = 0.5) -> Detections:
    """The fused detections of one image (see the module docstring), best score first.

    Both branches must have masks (``small`` after :func:`small_branch_masks`). ``ious`` is kept
    only when both branches have it."""
    if large.masks is None or small.masks is None:
        raise ValueError("fuse needs masks from both branches (small_branch_masks makes the small branch's)")
    li, si = select_fused(large, small, small_area=small_area, nms_iou=nms_iou)
    out = Detections.concat([large.take(li), small.take(si)])
    return out.take(_by_score(out))


class Fused(NamedTuple):
    """:func:`fuse_with_grabcut`'s result: the fused ``detections`` (best score first) and, per row,
    ``from_small`` (bool (N,): from the small branch) and ``valid`` (bool (N,): False where a small-
    branch mask is a fallback for an invalid GrabCut mask; True for every large-branch row)."""

    detections: Detections
    from_small: np.ndarray
    valid: np.ndarray


def fuse_with_grabcut(image: np.ndarray, large: Detections, small_boxes_only: Detections, cfg: GrabCutConfig,
                      seed: int, *, small_area: float = SMALL_AREA, nms_iou: float = 0.5) -> Fused:
    """:func:`fuse` with the small branch's masks made by GrabCut only for the detections that
    survive the fusion (NMS decides on boxes and scores, so it needs no masks).

    ``large`` must have masks; masks of ``small_boxes_only`` are ignored. A survivor's mask is
    the one :func:`small_branch_masks` would give it (seeded by its index in ``small_boxes_only``).
    The result has no ``ious``: GrabCut masks have no predicted IoU, and a fused list is not
    given a mix of predicted and missing values.
    """
    if large.masks is None:
        raise ValueError("the large branch must predict masks")
    li, si = select_fused(large, small_boxes_only, small_area=small_area, nms_iou=nms_iou)
    small, valid_small = _grabcut_rows(image, small_boxes_only.take(si), si, cfg, seed)
    out = Detections.concat([large.take(li), small])
    from_small = np.concatenate([np.zeros(len(li), bool), np.ones(len(si), bool)])
    valid = np.concatenate([np.ones(len(li), bool), valid_small])
    order = _by_score(out)
    return Fused(out.take(order), from_small[order], valid[order])


class HybridFusion:
    """The fusion as :meth:`Predictor.predict_images <wsis_cli.engine.predictor.Predictor.predict_images>`
    applies it to each image: ``fusion(image_record, rgb, large_detections)`` runs the small branch on
    the image, keeps the detections :func:`select_fused` keeps, and gives the small branch's
    survivors masks by ``rule`` (see the module docstring; GrabCut seeded by ``seed`` + the image
    id). ``counts`` keeps how many fused instances came from the small branch, how many of those
    are fallback ellipses and how many have the mask head's mask.

    ``large`` must be a mask model and ``small`` a box-only detector of the same categories;
    ``large_name`` and ``small_name`` (their run folders) name them in errors.
    """

    def __init__(self, large, small, *, seed: int = 0, score_thr: float = 0.05, small_area: float = SMALL_AREA,
                 nms_iou: float = 0.5, rule: str = "paper", large_name: str = "the mask model",
                 small_name: str = "the small branch"):
        from wsis_cli.errors import WsisError

        if rule not in RULES:
            raise WsisError(f"--fusion must be one of {', '.join(RULES)}, got {rule!r}")
        if not small_area > 0:
            raise WsisError(f"--small-area must be a positive area in px, got {small_area}")
        if not large.has_masks:
            raise WsisError(f"{large_name}: --small-branch fuses with a mask model, and this one was trained with "
                            "--boxes-only")
        if small.config["architecture"] != "fasterrcnn":
            raise WsisError(f"{small_name}: the small branch must be a box-only detector (train maskrcnn --boxes-only)")
        if small.config["category_ids"] != large.config["category_ids"]:
            raise WsisError(f"{small_name}: was trained on categories {small.config['category_ids']}, the mask model "
                            f"on {large.config['category_ids']}; both branches need the same categories")
        self.large, self.small, self.seed, self.score_thr = large, small, seed, score_thr
        self.small_area, self.nms_iou, self.rule = float(small_area), nms_iou, rule
        self.grabcut = GrabCutConfig(seed=seed)
        self.counts = {"from_small_branch": 0, "ellipses": 0, "mask_head": 0}

    def __call__(self, image: dict, rgb: np.ndarray, large: Detections) -> Detections:
        boxes = self.small.detect([rgb], score_thr=self.score_thr)[0]
        if self.rule == "paper":
            fused = fuse_with_grabcut(rgb, large, boxes, self.grabcut, self.seed + int(image["id"]),
                                      small_area=self.small_area, nms_iou=self.nms_iou)
            self.counts["from_small_branch"] += int(fused.from_small.sum())
            self.counts["ellipses"] += int((fused.from_small & ~fused.valid).sum())
            return fused.detections
        li, si = select_fused(large, boxes, small_area=self.small_area, nms_iou=self.nms_iou)
        picked = boxes.take(si)
        head = self.large.masks_in_boxes(rgb, picked.boxes, picked.category_ids)
        use_head, masks, ious = np.ones(len(si), dtype=bool), head.masks, head.ious
        if self.rule == "valid-or-head" and len(si):
            cut, valid = _grabcut_rows(rgb, picked, si, self.grabcut, self.seed + int(image["id"]))
            use_head = ~valid
            masks, ious = np.where(use_head[:, None, None], head.masks, cut.masks), None
        small = Detections(picked.boxes, picked.scores, picked.category_ids, picked.height, picked.width,
                           masks=masks, ious=ious)
        self.counts["from_small_branch"] += len(si)
        self.counts["mask_head"] += int(use_head.sum())
        out = Detections.concat([large.take(li), small])  # ious only where both have them
        return out.take(_by_score(out))
