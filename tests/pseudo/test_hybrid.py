import numpy as np
import pytest

from wsis_cli.pseudo import hybrid
from wsis_cli.detections import Detections
from wsis_cli.boxes import SMALL_AREA
from wsis_cli.pseudo.hybrid import fuse, fuse_with_grabcut, select_fused, small_branch_masks
from wsis_cli.metrics import mask_iou
from wsis_cli.pseudo.fallback import box_mask, ellipse_mask
from wsis_cli.pseudo.grabcut import GrabCutConfig

H = W = 200
CFG = GrabCutConfig()


def dets(rows, masks=True, ious=None):
    """rows: (x1, y1, x2, y2, score, category_id); masks: the boxes' own pixels."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    m = np.stack([box_mask(r[:4], H, W) for r in rows]) if len(rows) else np.zeros((0, H, W), bool)
    return Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64), H, W, masks=m if masks else None,
                      ious=ious)


# large branch: L0 small (30x30) class 1, L1 large (90x90) class 1, L2 small class 2
LARGE = [(10, 10, 40, 40, 0.6, 1), (100, 100, 190, 190, 0.9, 1), (50, 10, 80, 40, 0.5, 2)]
# small branch: S0 overlaps L0 with a higher score; S1 only here; S2 large (dropped); S3 on S0's
# box but class 2 (kept); S4 overlaps L2 with a lower score (suppressed)
SMALL = [(12, 12, 42, 42, 0.8, 1), (150, 10, 170, 30, 0.7, 1), (0, 100, 90, 190, 0.95, 1),
         (12, 12, 42, 42, 0.4, 2), (52, 12, 82, 42, 0.3, 2)]


# ----------------------------------------------------------------------------- fuse
def test_select_fused_survivors():
    li, si = select_fused(dets(LARGE), dets(SMALL, masks=False))
    np.testing.assert_array_equal(li, [1, 2])  # L0 lost to S0; L1 is large; L2 beat S4
    np.testing.assert_array_equal(si, [0, 1, 3])  # S2 is large: dropped


def test_fuse_exact_survivors_best_first():
    large, small = dets(LARGE), dets(SMALL)
    out = fuse(large, small)
    np.testing.assert_allclose(out.scores, [0.9, 0.8, 0.7, 0.5, 0.4])
    np.testing.assert_array_equal(out.category_ids, [1, 1, 1, 2, 2])
    np.testing.assert_allclose(out.boxes, np.array([LARGE[1], SMALL[0], SMALL[1], LARGE[2], SMALL[3]])[:, :4])
    np.testing.assert_array_equal(out.masks[0], large.masks[1])  # large instances as they are
    np.testing.assert_array_equal(out.masks[2], small.masks[1])
    assert out.ious is None


def test_fuse_split_at_64x64_box_area():
    exactly = (0, 0, 64, 64, 0.9, 1)  # area 4096: large
    under = (100, 100, 163, 164, 0.9, 1)  # 63 x 64: small
    out = fuse(dets([]), dets([exactly, under]))
    np.testing.assert_allclose(out.boxes, [under[:4]])
    out = fuse(dets([exactly, under]), dets([]))
    assert len(out) == 2
    assert SMALL_AREA == 64 * 64


def test_fuse_small_area_and_nms_iou_are_options():
    out = fuse(dets(LARGE), dets(SMALL), small_area=0)  # nothing is small: the large branch alone
    np.testing.assert_allclose(out.scores, [0.9, 0.6, 0.5])
    out = fuse(dets(LARGE), dets(SMALL), nms_iou=0.95)  # nothing suppressed
    np.testing.assert_allclose(out.scores, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])


def test_fuse_equal_scores_prefer_the_large_branch():
    box = (10, 10, 40, 40, 0.7, 1)
    large, small = dets([box]), dets([box])
    small.masks[0] = False
    out = fuse(large, small)
    assert len(out) == 1 and out.masks[0].any()


def test_fuse_keeps_ious_only_when_both_branches_have_them():
    large = dets(LARGE, ious=[0.1, 0.2, 0.3])
    assert fuse(large, dets(SMALL)).ious is None
    out = fuse(large, dets(SMALL, ious=[0.4, 0.5, 0.6, 0.7, 0.8]))
    np.testing.assert_allclose(out.ious, [0.2, 0.4, 0.5, 0.3, 0.7])


@pytest.mark.parametrize("rows", [[], LARGE])
def test_fuse_with_empty_branches(rows):
    out = fuse(dets(rows), dets([]))
    assert len(out) == len(rows) and out.masks.shape == (len(rows), H, W)
    out = fuse(dets([]), dets(rows))
    assert out.masks.shape[1:] == (H, W)


def test_fuse_needs_masks_and_one_image_size():
    with pytest.raises(ValueError, match="masks"):
        fuse(dets(LARGE), dets(SMALL, masks=False))
    other = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 10, 10, masks=np.zeros((0, 10, 10), bool))
    with pytest.raises(ValueError, match="image sizes"):
        fuse(dets(LARGE), other)


# ----------------------------------------------------------------------------- GrabCut
def scene(seed=0):
    """A red disc (centre 40,40, radius 12) on a noisy grey-green background, a flat blue square
    at 120..200, and the disc's mask."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal([90, 110, 90], 12, size=(H, W, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    disc = (xx + 0.5 - 40) ** 2 + (yy + 0.5 - 40) ** 2 <= 12 ** 2
    img[disc] = np.clip(rng.normal([210, 40, 40], 10, size=(disc.sum(), 3)), 0, 255).astype(np.uint8)
    img[120:, 120:] = (30, 60, 200)
    return img, disc


def iou(a, b):
    return mask_iou(a[None], b[None])[0, 0]


def test_small_branch_masks_grabcut_and_ellipse_fallback():
    img, disc = scene()
    det = dets([(26, 26, 54, 54, 0.9, 1), (140, 140, 180, 180, 0.8, 1)], masks=False)
    out, valid = small_branch_masks(img, det, CFG, seed=0)
    np.testing.assert_array_equal(valid, [True, False])
    assert iou(out.masks[0], disc) > 0.7
    np.testing.assert_array_equal(out.masks[1], ellipse_mask(det.boxes[1], H, W))  # uniform colour: invalid
    np.testing.assert_array_equal(out.boxes, det.boxes)
    np.testing.assert_array_equal(out.scores, det.scores)
    again, _ = small_branch_masks(img, det, CFG, seed=0)
    np.testing.assert_array_equal(again.masks, out.masks)


def test_small_branch_masks_of_no_detections_and_a_wrong_image():
    img, _ = scene()
    out, valid = small_branch_masks(img, dets([], masks=False), CFG, seed=0)
    assert out.masks.shape == (0, H, W) and valid.shape == (0,)
    with pytest.raises(ValueError, match="does not match"):
        small_branch_masks(img[:100], dets(SMALL, masks=False), CFG, seed=0)


def test_fuse_with_grabcut_runs_grabcut_on_survivors_only(monkeypatch):
    img, disc = scene()
    calls = []
    real = hybrid.segment_boxes

    def counting(image, boxes, seeds, cfg):
        calls.append(np.asarray(boxes).copy())
        return real(image, boxes, seeds, cfg)

    monkeypatch.setattr(hybrid, "segment_boxes", counting)
    large = dets([(0, 0, 30, 30, 0.9, 1), (100, 0, 190, 90, 0.6, 2)])  # a small and a large instance
    small = dets([(1, 1, 31, 31, 0.5, 1),          # loses to the large branch's small instance
                  (26, 26, 54, 54, 0.8, 1),        # the disc: kept, GrabCut mask
                  (0, 100, 100, 200, 0.99, 1),     # large: dropped
                  (140, 140, 180, 180, 0.7, 2)],   # flat colour: kept, ellipse
                 masks=False)
    out, from_small, valid = fuse_with_grabcut(img, large, small, CFG, seed=3)
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], [[26, 26, 54, 54], [140, 140, 180, 180]])
    np.testing.assert_allclose(out.scores, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_array_equal(from_small, [False, True, True, False])
    np.testing.assert_array_equal(valid, [True, True, False, True])
    np.testing.assert_array_equal(out.masks[0], large.masks[0])
    assert iou(out.masks[1], disc) > 0.7
    np.testing.assert_array_equal(out.masks[2], ellipse_mask([140, 140, 180, 180], H, W))
    assert out.ious is None
    # a survivor's mask is the one small_branch_masks gives it (seeded by its index in `small`)
    monkeypatch.setattr(hybrid, "segment_boxes", real)
    every, _ = small_branch_masks(img, small, CFG, seed=3)
    np.testing.assert_array_equal(out.masks[1], every.masks[1])
    np.testing.assert_array_equal(out.masks[2], every.masks[3])


def test_fuse_with_grabcut_and_fuse_agree():
    img, _ = scene()
    large, small = dets(LARGE), dets(SMALL, masks=False)
    a = fuse_with_grabcut(img, large, small, CFG, seed=0).detections
    b = fuse(large, small_branch_masks(img, small, CFG, seed=0)[0])
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.masks, b.masks)


# ----------------------------------------------------------------------------- HybridFusion rules
class FixedPredictor:
    """A stand-in for a Predictor: fixed detections, and a 'mask head' that fills the top half of
    each given box (so its masks are told apart from GrabCut's and the ellipse)."""

    def __init__(self, det, masks: bool):
        self.det = det
        self.has_masks = masks
        self.config = {"architecture": "maskrcnn" if masks else "fasterrcnn", "category_ids": [1, 2]}
        self.asked = []

    def detect(self, images, score_thr=0.05):
        return [self.det]

    def masks_in_boxes(self, image, boxes, category_ids):
        self.asked.append(np.asarray(boxes).copy())
        m = np.zeros((len(boxes), H, W), bool)
        for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, int).reshape(-1, 4)):
            m[i, y1:(y1 + y2) // 2, x1:x2] = True
        return Detections(boxes, np.full(len(boxes), 0.5), category_ids, H, W, masks=m)


def top_half(box):
    x1, y1, x2, y2 = map(int, box)
    m = np.zeros((H, W), bool)
    m[y1:(y1 + y2) // 2, x1:x2] = True
    return m


@pytest.mark.parametrize("rule", ["paper", "mask-head", "valid-or-head"])
def test_hybrid_fusion_rules(rule):
    img, disc = scene()
    large = dets([(100, 0, 190, 90, 0.6, 2)])  # one large instance
    small_boxes = dets([(26, 26, 54, 54, 0.8, 1),       # the disc: GrabCut is valid here
                        (140, 140, 180, 180, 0.7, 2)],  # flat colour: GrabCut is invalid
                       masks=False)
    big, small = FixedPredictor(large, True), FixedPredictor(small_boxes, False)
    fusion = hybrid.HybridFusion(big, small, seed=0, rule=rule)
    out = fusion({"id": 1}, img, large)
    np.testing.assert_allclose(out.scores, [0.8, 0.7, 0.6])
    np.testing.assert_array_equal(out.masks[2], large.masks[0])  # the large instance as it came
    head = [top_half(b) for b in small_boxes.boxes]
    if rule == "paper":
        assert iou(out.masks[0], disc) > 0.7
        np.testing.assert_array_equal(out.masks[1], ellipse_mask(small_boxes.boxes[1], H, W))
        assert fusion.counts == {"from_small_branch": 2, "ellipses": 1, "mask_head": 0} and not big.asked
    elif rule == "mask-head":
        np.testing.assert_array_equal(out.masks[0], head[0])
        np.testing.assert_array_equal(out.masks[1], head[1])
        assert fusion.counts == {"from_small_branch": 2, "ellipses": 0, "mask_head": 2}
    else:
        assert iou(out.masks[0], disc) > 0.7  # valid GrabCut kept
        np.testing.assert_array_equal(out.masks[1], head[1])  # the mask head instead of the ellipse
        assert fusion.counts == {"from_small_branch": 2, "ellipses": 0, "mask_head": 1}


def test_hybrid_fusion_small_area_and_rule_are_checked():
    big, small = FixedPredictor(dets(LARGE), True), FixedPredictor(dets(SMALL, masks=False), False)
    with pytest.raises(Exception, match="--fusion must be one of paper, mask-head, valid-or-head"):
        hybrid.HybridFusion(big, small, rule="best")
    with pytest.raises(Exception, match="--small-area must be a positive area"):
        hybrid.HybridFusion(big, small, small_area=0)
    # everything is "large" under a tiny split: the fused result is the large branch alone
    fusion = hybrid.HybridFusion(big, small, small_area=1.0)
    out = fusion({"id": 1}, scene()[0], big.det)
    np.testing.assert_allclose(out.boxes, big.det.boxes[np.argsort(-big.det.scores)])
