"""Who owns a pixel that several instance masks of one image claim (``--overlap``).

Policies (each measured per class on coco-mini and synthetic data, see benchmarks/RESULTS.md):

- ``smaller``: the smaller mask (pixel count before resolution) takes the shared pixels.
- ``larger``: the larger mask takes them.
- ``lower-edge``: the instance whose *box* reaches lower in the image is in front and takes them
  (the ground-plane cue: on a floor or a street, the nearer object stands lower in the picture).
- ``evidence``: each shared pixel goes to the instance whose colour model explains it better.
  OpenCV's GrabCut does not return its GMMs or likelihoods, so each instance gets a cheap colour
  model of its own: a histogram over 16 levels per channel (4096 bins, add-one smoothed) of its
  mask's uncontested pixels (foreground) and one of the pixels around it, in its box widened by a
  fifth of its sides, that no mask of its own covers (background). A pixel's evidence for an
  instance is the log-ratio ``log p_fg(c) - log p_bg(c)`` of its colour ``c``, averaged over a
  5x5 window (colour alone is noisy pixel by pixel); the highest evidence wins.
- ``none``: masks stay as they are, overlapping (Mask R-CNN trains on overlapping masks).

Ties (equal sizes, equal bottom edges, equal evidence) go to the larger ``key`` (e.g. the
annotation id), so the outcome never depends on the order of the annotations. With every
policy but ``none``, a mask that loses all its pixels becomes ``method "none"``, not valid.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from wsis_cli.errors import WsisError

__all__ = ["OVERLAPS", "resolve", "colour_evidence"]

OVERLAPS = ("smaller", "larger", "lower-edge", "evidence", "none")
LEVELS = 16  # histogram levels per colour channel of the evidence policy


def _window(r) -> tuple[slice, slice]:
    (r0, c0), (mh, mw) = r.offset, r.mask.shape
    return slice(r0, r0 + mh), slice(c0, c0 + mw)


def _paint_order(results, present: list[int], keys, policy: str, boxes) -> list[int]:
    """Instances in painting order: the one painted last is in front."""
    area = {i: int(results[i].mask.sum()) for i in present}
    if policy == "smaller":
        return sorted(present, key=lambda i: (-area[i], keys[i]))
    if policy == "larger":
        return sorted(present, key=lambda i: (area[i], keys[i]))
    if boxes is None:
        raise WsisError("the lower-edge overlap policy needs the boxes")
    bottom = {i: float(np.asarray(boxes[i], dtype=np.float64)[3]) for i in present}
    return sorted(present, key=lambda i: (bottom[i], -area[i], keys[i]))  # equal edges: the smaller in front


def colour_evidence(image: np.ndarray, mask: np.ndarray, offset: tuple[int, int], box, fg_pixels: np.ndarray
                    ) -> tuple[np.ndarray, tuple[int, int]]:
    """One instance's colour evidence, ``float32`` over its box widened by a fifth of each side
    (returned with that window's ``(row0, col0)``): ``log p_fg(c) - log p_bg(c)`` per pixel,
    averaged over 5x5 pixels. ``mask`` over the window at ``offset`` is the instance's mask,
    ``fg_pixels`` (same shape) the pixels its foreground histogram is fitted on."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = 0.2 * (x2 - x1) + 2, 0.2 * (y2 - y1) + 2
    R1, R2 = max(0, int(np.floor(y1 - my))), min(h, int(np.ceil(y2 + my)))
    C1, C2 = max(0, int(np.floor(x1 - mx))), min(w, int(np.ceil(x2 + mx)))
    (r0, c0), (mh, mw) = offset, mask.shape
    R1, R2, C1, C2 = min(R1, r0), max(R2, r0 + mh), min(C1, c0), max(C2, c0 + mw)
    q = image[R1:R2, C1:C2].astype(np.int32) * LEVELS // 256
    bins = (q[..., 0] * LEVELS + q[..., 1]) * LEVELS + q[..., 2]
    own = np.zeros(bins.shape, bool)
    fit = np.zeros(bins.shape, bool)
    own[r0 - R1:r0 - R1 + mh, c0 - C1:c0 - C1 + mw] = mask
    fit[r0 - R1:r0 - R1 + mh, c0 - C1:c0 - C1 + mw] = fg_pixels
    if not fit.any():
        fit = own
    k = LEVELS ** 3
    fg = np.bincount(bins[fit], minlength=k) + 1.0
    bg = np.bincount(bins[~own], minlength=k) + 1.0
    ratio = (np.log(fg / fg.sum()) - np.log(bg / bg.sum())).astype(np.float32)
    return cv2.blur(ratio[bins], (5, 5)), (R1, C1)


def _evidence_owner(results, present: list[int], keys, boxes, image, owner: np.ndarray) -> np.ndarray:
    """``owner`` (painted by the smaller rule) with every contested pixel given to the instance
    of highest colour evidence."""
    claims = np.zeros(owner.shape, np.int16)
    for i in present:
        claims[_window(results[i])] += results[i].mask
    best = np.full(owner.shape, -np.inf, np.float32)
    for i in sorted(present, key=lambda i: keys[i]):  # equal evidence: the larger key (later) wins
        r = results[i]
        ws = _window(r)
        contested = r.mask & (claims[ws] > 1)
        if not contested.any():
            continue
        ev, (R1, C1) = colour_evidence(image, r.mask, r.offset, boxes[i], r.mask & ~contested)
        (r0, c0), (mh, mw) = r.offset, r.mask.shape
        ev = ev[r0 - R1:r0 - R1 + mh, c0 - C1:c0 - C1 + mw]
        win_best, win_owner = best[ws], owner[ws]
        take = contested & (ev >= win_best)
        win_best[take] = ev[take]
        win_owner[take] = i
    return owner


def resolve(results: list, keys: list[int], height: int, width: int, *, policy: str = "smaller",
            boxes=None, image: np.ndarray | None = None) -> list:
    """The masks of one image's ``results`` (``BoxResult``) with overlaps resolved by ``policy``
    (:data:`OVERLAPS`). ``boxes`` (N, 4) ``x1, y1, x2, y2``: needed by ``lower-edge`` and
    ``evidence``; ``image`` (``HxWx3`` uint8): needed by ``evidence``."""
    if policy not in OVERLAPS:
        raise WsisError(f"--overlap must be one of {', '.join(OVERLAPS)}, got {policy!r}")
    present = [i for i, r in enumerate(results) if r.mask is not None and r.mask.any()]
    if policy == "none" or len(present) < 2:
        return list(results)
    owner = np.full((height, width), -1, dtype=np.int32)
    for i in _paint_order(results, present, keys, "smaller" if policy == "evidence" else policy, boxes):
        owner[_window(results[i])][results[i].mask] = i
    if policy == "evidence":
        if image is None or boxes is None:
            raise WsisError("the evidence overlap policy needs the image and the boxes")
        owner = _evidence_owner(results, present, keys, boxes, image, owner)
    out = []
    for i, r in enumerate(results):
        if i not in present:
            out.append(r)
            continue
        kept = owner[_window(r)] == i
        out.append(replace(r, mask=kept) if kept.any() else replace(r, mask=kept, method="none", valid=False))
    return out
