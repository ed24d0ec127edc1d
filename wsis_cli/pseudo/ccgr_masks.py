"""What CCGR writes for a refined box: the plausibility guard, the mask rule, duplicates and the
instances a class map shows beyond its boxes (numpy, OpenCV, pycocotools).

CCGR's input boxes usually come with evidence of their own: a PRM region, a mask predicted by a
trained model. Refinement must not throw that away, and a class map that is coarse (a class
activation map) or wrong must not be allowed to move a box anywhere it likes. Per box, with
``S`` its class plane (0..1, image size), ``b0`` the input box, ``b`` the refined one and ``M0``
its incoming mask (``None`` when the annotation has none):

Guard (:func:`plausible`): the move is kept only when ``b`` holds at least ``keep_region`` of
``M0``'s pixels (the box has not left its region) and its area is within ``max_grow`` times
``b0``'s, either way. Otherwise ``b0`` is kept and the box is counted as ``kept_box``.

Mask rules (:data:`MASK_RULES`, ``--mask-rule``):

``union`` (default)  ``((S > mask_thr) - others) | (M0 & S >= contradict)``, inside ``b``: the map's
                     pixels, less those that other instances of the class in the image own by
                     their incoming masks, joined with the incoming mask wherever the map does
                     not contradict it (scores below ``contradict``).
``map``              ``S > mask_thr`` inside ``b`` (the paper's crop of the map).
``incoming``         ``M0`` inside ``b`` (only the box is refined).

A mask that comes out empty is never written: the map contradicts the instance everywhere, so by
default (``empty="drop"``) the instance is dropped (``dropped``; the caller warns once, with the
count: on PRM inputs these are mostly peaks on background, and dropping them raised the share of
pseudo-masks that match an object from 0.63 to 0.77 at the same mAP, benchmarks/RESULTS.md); with
``empty="incoming"`` the incoming mask, with the *input* box, replaces it (``fallback``), and only
an instance with no incoming mask is dropped. Every written annotation's ``bbox`` is the tight box of its mask, so a box
target never disagrees with its mask; the refined box itself is recorded.

Over a whole image (``pseudolabel ccgr`` after every box): two instances of a class whose masks
overlap by IoU above ``dedup`` are one object; the lower-scored is dropped (:func:`duplicates`).
With image-level labels (``--labels``), a class with fewer instances than its IL+C count (or, IL,
none at all) gets the missing ones from the class map: the largest connected parts of ``S >
mask_thr`` that no instance covers (:func:`components`), each scored by its mean map score. PRM
misses objects (no peak of their own) and the IS branch misses some too; the SS branch's map, which
delineates the class, often shows them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASK_RULES", "plausible", "instance_mask", "crop_masks", "box_of_mask", "duplicates", "components"]

MASK_RULES = ("union", "map", "incoming")


def _box_mask(shape: tuple[int, int], box) -> np.ndarray:
    """``bool (H, W)``: the pixels whose centres lie in ``box`` (x1, y1, x2, y2)."""
    from wsis_cli.pseudo.fallback import pixel_span

    h, w = shape
    m = np.zeros((h, w), dtype=bool)
    c1, c2 = pixel_span(box[0], box[2], w)
    r1, r2 = pixel_span(box[1], box[3], h)
    m[r1:r2, c1:c2] = True
    return m


def plausible(before, after, incoming: np.ndarray | None, *, keep_region: float, max_grow: float) -> bool:
    """Whether a refinement from ``before`` to ``after`` (x1, y1, x2, y2) is believable (see the
    module docstring); ``incoming``: ``bool (H, W)`` or None."""
    a0 = max((before[2] - before[0]) * (before[3] - before[1]), 1e-9)
    a1 = max((after[2] - after[0]) * (after[3] - after[1]), 1e-9)
    if not (1.0 / max_grow <= a1 / a0 <= max_grow):
        return False
    if incoming is not None and incoming.any():
        held = np.count_nonzero(incoming & _box_mask(incoming.shape, after)) / np.count_nonzero(incoming)
        if held < keep_region:
            return False
    return True


def instance_mask(plane: np.ndarray, box, incoming: np.ndarray | None, others: np.ndarray | None, *,
                  rule: str, mask_thr: float, contradict: float) -> np.ndarray:
    """The mask of one refined ``box`` by ``rule`` (see the module docstring).

    Args:
        plane: ``float (H, W)`` the class plane.
        box: x1, y1, x2, y2.
        incoming: ``bool (H, W)`` the annotation's own mask, or None.
        others: ``bool (H, W)`` pixels other instances of the class own by their incoming masks, or None.
    Returns:
        ``bool (H, W)``, possibly empty.
    """
    inside = _box_mask(plane.shape, box)
    if rule == "incoming":
        return incoming & inside if incoming is not None else np.zeros(plane.shape, dtype=bool)
    mapped = (plane > mask_thr) & inside
    if rule == "map":
        return mapped
    if others is not None:
        mapped &= ~others
    if incoming is not None:
        mapped |= incoming & (plane >= contradict) & inside
    return mapped


def box_of_mask(mask: np.ndarray) -> np.ndarray:
    """``float (4,)`` x1, y1, x2, y2 of a non-empty mask (pixel edges)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def crop_masks(plane: np.ndarray, boxes: np.ndarray, thr: float) -> list[np.ndarray]:
    """Masks ``bool (H, W)``: ``plane > thr`` inside each box (pixels whose centres lie in it)."""
    return [(plane > thr) & _box_mask(plane.shape, b) for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)]


def duplicates(masks: list[dict], scores, groups: list, iou_thr: float) -> np.ndarray:
    """``bool (N,)``: which instances are duplicates: within a group (one image, one class), in order
    of falling score (ties: the earlier first), an instance whose mask overlaps one already kept by
    mask IoU above ``iou_thr``. ``masks``: compressed RLEs (pycocotools form)."""
    from pycocotools import mask as mask_utils

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    dup = np.zeros(len(masks), dtype=bool)
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    for idx in members.values():
        kept: list[int] = []
        for i in sorted(idx, key=lambda j: (-scores[j], j)):
            if kept and mask_utils.iou([masks[i]], [masks[j] for j in kept], [0] * len(kept)).max() > iou_thr:
                dup[i] = True
            else:
                kept.append(i)
    return dup


def components(plane: np.ndarray, covered: np.ndarray, *, thr: float, k: int, min_area: int) -> list[np.ndarray]:
    """Up to ``k`` masks ``bool (H, W)``, largest first: the 8-connected parts of ``plane > thr`` outside
    ``covered`` of at least ``min_area`` pixels (instances a class map shows and no box holds)."""
    import cv2

    if k <= 0:
        return []
    fg = ((plane > thr) & ~covered).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = [int(i) + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area]
    return [lab == i for i in order[:k]]
