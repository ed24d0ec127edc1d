"""Box -> instance mask by GrabCut (Rother et al. 2004), as the hybrid-networks paper uses it.

For each box, GrabCut runs on a crop of the box plus a margin (not the whole image): the
pixels outside the box are sure background, the box is probable foreground. A mask whose own
bounding box has IoU < ``valid_iou`` with the given box is *invalid* (the paper's rule) and is
replaced by the fallback, by default the ellipse inscribed in the box.

Results are deterministic: OpenCV's random generator (GrabCut's k-means) is reseeded for every
box from ``(seed, annotation id)``, so a box gets the same mask in any order, process or shard.

Beyond the paper's recipe (each measured on COCO boxes, see benchmarks/RESULTS.md):
``init``: how the box is seeded (``rect``: the whole box probable foreground; ``ellipse``:
the box corners outside the inscribed ellipse probable background; ``core``: a central ellipse
of a quarter of the box's half-axes sure foreground), ``color`` (GrabCut's colour
space), ``cleanup`` (morphological clean-up, keep the component that best fills the box, fill
holes; ``opening``: whether it opens the mask with a 3x3 square first, which cuts parts 2 px
thin: star tips, limbs, legs), ``max_side`` with ``downscale`` (large crops are downscaled before
GrabCut, the mask upscaled after: to ``max_side`` px on the longer side, or to ``max_side**2``
pixels, which leaves a tall, thin crop wider) and ``overlap`` (who owns pixels two masks claim,
:mod:`wsis_cli.pseudo.overlap`, applied per image by the caller).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from wsis_cli.boxes import box_iou, mask_to_box
from wsis_cli.errors import WsisError
from wsis_cli.pseudo.fallback import FALLBACKS, fallback_crop, paste, pixel_span
from wsis_cli.pseudo.overlap import OVERLAPS, resolve

__all__ = ["GrabCutConfig", "BoxResult", "grabcut_trimap", "grabcut_box", "segment_boxes", "resolve_overlaps",
           "box_seed"]

INITS = ("rect", "ellipse", "core")
COLORS = ("rgb", "lab", "hsv")


@dataclass(frozen=True)
class GrabCutConfig:
    iters: int = 5              # GrabCut iterations
    margin: float = 0.2         # crop margin around the box, as a fraction of the box side
    min_margin: int = 8         # ... and at least this many pixels (where the image allows)
    valid_iou: float = 0.5      # a mask is valid when IoU(its bbox, the given box) >= this
    min_fill: float = 0.0       # ... and it covers at least this fraction of the box
    fallback: str = "ellipse"   # ellipse | box | none: what replaces an invalid or empty mask
    init: str = "rect"          # rect | ellipse | core: seeding of the box
    color: str = "rgb"          # rgb | lab | hsv: the space GrabCut's colour models live in
    cleanup: bool = True        # open/close, keep the component that best fills the box, fill holes
    opening: bool = False       # with cleanup: open (3x3) before closing (cuts 2 px thin parts)
    max_side: int = 160         # downscale crops bigger than this (see downscale; 0: never)
    downscale: str = "area"     # area | side: scale to max_side**2 pixels, or to max_side on the longer
                                # side (a 4:1 crop: 320x80 against 160x40 px; square crops: the same)
    min_side: int = 4           # boxes narrower than this (px) skip GrabCut: too few pixels to model
    overlap: str = "none"       # none | smaller | larger | lower-edge | evidence (pseudo/overlap.py)
    retry_iou: float = 0.7      # if > 0: an invalid mask gets a second GrabCut seeded with a sure-
                                # foreground core, kept when its bbox IoU reaches this (stricter) bar
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise WsisError(f"--iters must be >= 1, got {self.iters}")
        if not 0.0 <= self.valid_iou <= 1.0:
            raise WsisError(f"--valid-iou must be in [0, 1], got {self.valid_iou}")
        if self.margin < 0:
            raise WsisError(f"--margin must be >= 0, got {self.margin}")
        if self.fallback not in FALLBACKS:
            raise WsisError(f"--fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        if self.init not in INITS:
            raise WsisError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.downscale not in ("side", "area"):
            raise WsisError(f"downscale must be side or area, got {self.downscale!r}")
        if self.overlap not in OVERLAPS:
            raise WsisError(f"--overlap must be one of {', '.join(OVERLAPS)}, got {self.overlap!r}")
        if self.color not in COLORS:
            raise WsisError(f"color must be one of {', '.join(COLORS)}, got {self.color!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BoxResult:
    """One box's mask as a crop (bool ``mask`` over the window starting at ``offset`` =
    ``(row0, col0)``; None when there is none) and how it was made."""

    mask: np.ndarray | None
    offset: tuple[int, int]
    method: str      # grabcut | ellipse | box | none
    valid: bool      # the GrabCut mask passed the validity rule
    box_iou: float   # IoU of the GrabCut mask's bbox with the given box (0 when GrabCut gave nothing)

    def full(self, height: int, width: int) -> np.ndarray | None:
        return None if self.mask is None else paste((self.mask, self.offset), height, width)


def box_seed(seed: int, ann_id: int) -> int:
    """OpenCV RNG seed of one box: the same for the same ``(seed, annotation id)``, any sign."""
    words = [v & 0xFFFFFFFF for v in (seed, seed >> 32, ann_id, ann_id >> 32)]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


def _largest_filling_component(fg: np.ndarray, box_px: tuple[int, int, int, int]) -> np.ndarray:
    """Keep the connected component whose bbox best matches the box (ties: the larger one)."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n <= 2:
        return fg
    boxes = np.stack([stats[1:, 0], stats[1:, 1], stats[1:, 0] + stats[1:, 2], stats[1:, 1] + stats[1:, 3]], 1)
    ious = box_iou(boxes, np.array([box_px], dtype=np.float64))[:, 0]
    best = int(np.lexsort((-stats[1:, cv2.CC_STAT_AREA], -ious))[0]) + 1
    return labels == best


def _ellipse_distance(b1: int, b2: int, a1: int, a2: int, scale: float) -> np.ndarray:
    """Over the window rows b1:b2, cols a1:a2: each pixel centre's squared normalised distance
    from the window's centre, for the centred ellipse with ``scale`` times the inscribed
    ellipse's half-axes (<= 1 inside it)."""
    yy, xx = np.mgrid[b1:b2, a1:a2]
    cy, cx, ry, rx = (b1 + b2) / 2, (a1 + a2) / 2, (b2 - b1) / 2, (a2 - a1) / 2
    return ((xx + 0.5 - cx) / (scale * rx)) ** 2 + ((yy + 0.5 - cy) / (scale * ry)) ** 2


def _fill_holes(m: np.ndarray) -> np.ndarray:
    import cv2

    inv = np.pad(~m, 1, constant_values=True).astype(np.uint8)
    n, labels = cv2.connectedComponents(inv, connectivity=4)
    outside = labels == labels[0, 0]
    return m | ~outside[1:-1, 1:-1]


def grabcut_trimap(image: np.ndarray, trimap: np.ndarray, *, iters: int, seed: int) -> np.ndarray | None:
    """GrabCut initialised with a trimap: the one call to OpenCV's GrabCut that box and PRM masks share.

    Args:
        image: ``uint8 (h, w, 3)``, in the channel order the caller's colour models want.
        trimap: ``uint8 (h, w)`` of ``cv2.GC_BGD``, ``GC_FGD``, ``GC_PR_BGD``, ``GC_PR_FGD``;
            updated in place.
        iters: GrabCut iterations.
        seed: OpenCV's random generator (GrabCut's k-means) is seeded with it first.
    Returns:
        ``bool (h, w)``: the sure and probable foreground; None when GrabCut cannot fit its colour
        models (too few distinct pixels).
    """
    import cv2

    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(int(seed))
    try:
        cv2.grabCut(np.ascontiguousarray(image), trimap, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    return (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)


def grabcut_box(image: np.ndarray, box, cfg: GrabCutConfig, seed: int) -> tuple[np.ndarray | None, tuple[int, int]]:
    """GrabCut one ``x1, y1, x2, y2`` box (inside the image) of an ``HxWx3`` uint8 image.

    Returns ``(mask, (row0, col0))``: the mask over the crop that starts at ``(row0, col0)``,
    or ``(None, ...)`` when the box is too thin for GrabCut or GrabCut finds no model.
    """
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    c1, c2 = pixel_span(x1, x2, w)
    r1, r2 = pixel_span(y1, y2, h)
    if c2 - c1 < cfg.min_side or r2 - r1 < cfg.min_side:
        return None, (r1, c1)
    mx = max(cfg.min_margin, cfg.margin * (c2 - c1))
    my = max(cfg.min_margin, cfg.margin * (r2 - r1))
    R1, R2 = max(0, int(np.floor(r1 - my))), min(h, int(np.ceil(r2 + my)))
    C1, C2 = max(0, int(np.floor(c1 - mx))), min(w, int(np.ceil(c2 + mx)))
    crop = image[R1:R2, C1:C2]
    ch, cw = crop.shape[:2]
    scale = 1.0
    side = max(ch, cw) if cfg.downscale == "side" else np.sqrt(ch * cw)  # "area": keep thin crops' width
    if cfg.max_side and side > cfg.max_side:
        scale = cfg.max_side / side
        crop = cv2.resize(crop, (max(1, round(cw * scale)), max(1, round(ch * scale))), interpolation=cv2.INTER_AREA)
    sh, sw = crop.shape[:2]
    # the box in (possibly scaled) crop pixels
    b1, b2 = int(np.floor((r1 - R1) * scale)), max(int(np.floor((r1 - R1) * scale)) + 1, int(np.ceil((r2 - R1) * scale)))
    a1, a2 = int(np.floor((c1 - C1) * scale)), max(int(np.floor((c1 - C1) * scale)) + 1, int(np.ceil((c2 - C1) * scale)))
    b2, a2 = min(b2, sh), min(a2, sw)

    gc = np.full((sh, sw), cv2.GC_BGD, dtype=np.uint8)
    gc[b1:b2, a1:a2] = cv2.GC_PR_FGD
    if cfg.init == "ellipse":
        gc[b1:b2, a1:a2][_ellipse_distance(b1, b2, a1, a2, 1.0) > 1.0] = cv2.GC_PR_BGD  # the corners
    elif cfg.init == "core" and min(b2 - b1, a2 - a1) >= 8:
        gc[b1:b2, a1:a2][_ellipse_distance(b1, b2, a1, a2, 0.25) <= 1.0] = cv2.GC_FGD
    bg = (gc == cv2.GC_BGD) | (gc == cv2.GC_PR_BGD)
    if bg.sum() < 16:  # the box fills the crop (e.g. the whole image): its rim stands for the background
        ring = max(1, round(0.05 * min(b2 - b1, a2 - a1)))
        rim = np.zeros_like(bg)
        rim[b1:b2, a1:a2] = True
        rim[b1 + ring:b2 - ring, a1 + ring:a2 - ring] = False
        gc[rim] = cv2.GC_PR_BGD
    if cfg.color == "lab":
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB)
    elif cfg.color == "hsv":
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    fg = grabcut_trimap(crop, gc, iters=cfg.iters, seed=seed)
    if fg is None:
        return None, (R1, C1)
    if scale != 1.0:
        fg = cv2.resize(fg.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_NEAREST).astype(bool)
    inside = np.zeros((ch, cw), dtype=bool)
    inside[r1 - R1:r2 - R1, c1 - C1:c2 - C1] = True
    fg &= inside
    if cfg.cleanup and fg.any():
        k = np.ones((3, 3), np.uint8)
        if cfg.opening and min(r2 - r1, c2 - c1) >= 12:
            fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, k).astype(bool)
        fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, k).astype(bool) & inside
        if fg.any():
            fg = _fill_holes(_largest_filling_component(fg, (c1 - C1, r1 - R1, c2 - C1, r2 - R1)))
    return (fg if fg.any() else None), (R1, C1)


def _crop_box(crop: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    b = mask_to_box(crop)
    return b + np.array([offset[1], offset[0], offset[1], offset[0]], dtype=np.float64)


def segment_boxes(image: np.ndarray, boxes: np.ndarray, seeds: list[int], cfg: GrabCutConfig) -> list[BoxResult]:
    """Masks (as crops) for ``boxes`` (N, 4) ``x1, y1, x2, y2`` of one image, validity rule,
    retry and fallback applied, before overlap resolution."""
    h, w = image.shape[:2]
    out = []
    retry = replace(cfg, init="core") if cfg.retry_iou > 0 and cfg.init != "core" else None

    def attempt(box, c: GrabCutConfig, seed: int) -> tuple[np.ndarray | None, tuple[int, int], float]:
        crop, offset = grabcut_box(image, box, c, seed)
        if crop is None:
            return None, offset, 0.0
        iou = float(box_iou(_crop_box(crop, offset)[None], np.asarray(box, dtype=np.float64)[None])[0, 0])
        box_px = max(1e-9, (box[2] - box[0]) * (box[3] - box[1]))
        return (crop if crop.sum() >= c.min_fill * box_px else None), offset, iou

    for box, seed in zip(boxes, seeds):
        crop, offset, iou = attempt(box, cfg, seed)
        if crop is not None and iou >= cfg.valid_iou:
            out.append(BoxResult(crop, offset, "grabcut", True, iou))
            continue
        if retry is not None:
            crop2, offset2, iou2 = attempt(box, retry, seed)
            if crop2 is not None and iou2 >= max(cfg.valid_iou, cfg.retry_iou):
                out.append(BoxResult(crop2, offset2, "grabcut", True, iou2))
                continue
        fb = fallback_crop(cfg.fallback, box, h, w)
        if fb is None:  # --fallback none: keep GrabCut's invalid mask as it is (or nothing)
            out.append(BoxResult(crop, offset, "grabcut" if crop is not None else "none", False, iou))
        else:
            out.append(BoxResult(fb[0], fb[1], cfg.fallback, False, iou))
    return out


def resolve_overlaps(results: list[BoxResult], keys: list[int], height: int, width: int, *, policy: str = "smaller",
                     boxes=None, image: np.ndarray | None = None) -> list[BoxResult]:
    """Pixels claimed by several masks go to one of them by ``policy`` (default: the smallest,
    by pixel count before resolution; equal sizes: the larger ``key``, e.g. annotation id, so
    the outcome does not depend on the order of the annotations); see
    :func:`wsis_cli.pseudo.overlap.resolve` for the others. A mask that loses every pixel
    becomes ``method "none"``, not valid."""
    return resolve(results, keys, height, width, policy=policy, boxes=boxes, image=image)
