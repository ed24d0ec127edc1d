import numpy as np
import pytest

from wsis_cli.boxes import mask_to_box
from wsis_cli.metrics import mask_iou
from wsis_cli.pseudo.fallback import box_crop, box_mask, ellipse_mask
from wsis_cli.pseudo.grabcut import (BoxResult, GrabCutConfig, box_seed, grabcut_box, grabcut_trimap, resolve_overlaps,
                                     segment_boxes)
from wsis_cli.errors import WsisError


def scene(h=96, w=96, seed=0):
    """A red disc (centre 48,48, radius 20) on a noisy grey-green background, and its mask."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal([90, 110, 90], 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx + 0.5 - 48) ** 2 + (yy + 0.5 - 48) ** 2 <= 20 ** 2
    img[disc] = np.clip(rng.normal([210, 40, 40], 10, size=(disc.sum(), 3)), 0, 255).astype(np.uint8)
    return img, disc


def iou(a, b):
    return mask_iou(a[None], b[None])[0, 0]


CFG = GrabCutConfig()


def test_grabcut_finds_the_object_in_its_box():
    img, disc = scene()
    res = segment_boxes(img, np.array([[28.0, 28.0, 68.0, 68.0]]), [1], CFG)[0]
    assert res.method == "grabcut" and res.valid
    assert iou(res.full(96, 96), disc) > 0.9
    assert res.box_iou > 0.9


def test_the_same_seed_gives_the_same_mask():
    img, _ = scene()
    a, _ = grabcut_box(img, [20, 20, 76, 76], CFG, seed=box_seed(0, 7))
    b, _ = grabcut_box(img, [20, 20, 76, 76], CFG, seed=box_seed(0, 7))
    np.testing.assert_array_equal(a, b)


def test_validity_rule_and_fallbacks():
    # the box is far larger than the disc in its corner: GrabCut finds the disc, whose bbox has
    # IoU (40*40)/(90*90) ~ 0.2 with the box: invalid, replaced by the fallback
    img, disc = scene(h=120, w=120)
    box = np.array([[26.0, 26.0, 116.0, 116.0]])
    plain = GrabCutConfig(retry_iou=0)
    res = segment_boxes(img, box, [1], plain)[0]
    assert res.method == "ellipse" and not res.valid
    assert 0.0 < res.box_iou < 0.5
    np.testing.assert_array_equal(res.full(120, 120), ellipse_mask(box[0], 120, 120))
    res = segment_boxes(img, box, [1], GrabCutConfig(fallback="box", retry_iou=0))[0]
    assert res.method == "box" and not res.valid
    np.testing.assert_array_equal(res.full(120, 120), box_mask(box[0], 120, 120))
    res = segment_boxes(img, box, [1], GrabCutConfig(fallback="none", retry_iou=0))[0]
    assert res.method == "grabcut" and not res.valid and iou(res.full(120, 120), disc) > 0.8  # GrabCut's own, kept
    res = segment_boxes(img, box, [1], GrabCutConfig(valid_iou=0.1))[0]
    assert res.method == "grabcut" and res.valid  # the threshold decides


def test_validity_threshold_is_inclusive():
    img, _ = scene(h=120, w=120)
    box = np.array([[26.0, 26.0, 116.0, 116.0]])
    first = segment_boxes(img, box, [1], GrabCutConfig(retry_iou=0))[0]
    at = segment_boxes(img, box, [1], GrabCutConfig(valid_iou=first.box_iou, retry_iou=0))[0]
    assert at.valid and at.method == "grabcut"  # IoU == threshold is valid
    above = segment_boxes(img, box, [1], GrabCutConfig(valid_iou=min(1.0, first.box_iou + 1e-9), retry_iou=0))[0]
    assert not above.valid


def test_an_object_filling_its_box_to_the_image_border():
    # a flat rectangle touching the right and bottom borders; the box is exactly it
    img = np.full((50, 70, 3), (40, 160, 60), np.uint8)
    img[20:50, 30:70] = (220, 40, 40)
    res = segment_boxes(img, np.array([[30.0, 20.0, 70.0, 50.0]]), [1], CFG)[0]
    expected = np.zeros((50, 70), bool)
    expected[20:50, 30:70] = True
    assert res.valid
    np.testing.assert_array_equal(res.full(50, 70), expected)


def test_min_fill_rule():
    img, _ = scene()
    box = np.array([[28.0, 28.0, 68.0, 68.0]])
    assert segment_boxes(img, box, [1], GrabCutConfig(min_fill=0.7))[0].valid  # the disc fills pi/4 of its box
    assert not segment_boxes(img, box, [1], GrabCutConfig(min_fill=0.9))[0].valid


@pytest.mark.parametrize("box", [[47, 47, 48, 48], [47, 40, 49, 60], [0, 0, 96, 96], [0, 30, 30, 96],
                                 [10.3, 10.7, 12.9, 11.2]])
def test_degenerate_boxes_never_crash(box):
    img, _ = scene()
    res = segment_boxes(img, np.array([box], float), [3], CFG)[0]
    assert res.mask is not None and res.mask.any()
    x1, y1, x2, y2 = mask_to_box(res.full(96, 96))
    assert x1 >= np.floor(box[0]) and y1 >= np.floor(box[1]) and x2 <= np.ceil(box[2]) and y2 <= np.ceil(box[3])
    if min(box[2] - box[0], box[3] - box[1]) < CFG.min_side:
        assert res.method == "ellipse" and not res.valid and res.box_iou == 0.0


def test_whole_image_box_still_segments_the_object():
    # a tight box covering the whole image means the object reaches every border: here a disc
    # wider than the image, background only in the corners. No pixel is known background, so
    # the box's rim seeds the background model.
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal([90, 110, 90], 12, size=(60, 60, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:60, 0:60]
    disc = (xx + 0.5 - 30) ** 2 + (yy + 0.5 - 30) ** 2 <= 36 ** 2
    img[disc] = np.clip(rng.normal([210, 40, 40], 10, size=(disc.sum(), 3)), 0, 255).astype(np.uint8)
    res = segment_boxes(img, np.array([[0.0, 0.0, 60.0, 60.0]]), [1], CFG)[0]
    assert res.method == "grabcut" and res.valid
    m = res.full(60, 60)
    assert iou(m, disc) > 0.95
    assert not m[0, 0] and not m[-1, -1]  # the background corners stay out


def as_result(box, h=30, w=30):
    m, off = box_crop(box, h, w)
    return BoxResult(m, off, "grabcut", True, 1.0)


def test_overlaps_go_to_the_smaller_instance():
    big, small = as_result([0, 0, 20, 20]), as_result([10, 10, 25, 25])
    none = BoxResult(None, (0, 0), "none", False, 0.0)
    out = resolve_overlaps([big, none, small], [1, 2, 3], 30, 30)
    assert out[1] is none
    np.testing.assert_array_equal(out[2].full(30, 30), small.full(30, 30))
    np.testing.assert_array_equal(out[0].full(30, 30), big.full(30, 30) & ~small.full(30, 30))
    assert out[0].valid and out[0].method == "grabcut"
    assert resolve_overlaps([big], [1], 30, 30) == [big]


def test_equal_sizes_go_to_the_larger_id_whatever_the_order():
    a, b = as_result([0, 0, 10, 10]), as_result([5, 5, 15, 15])
    for order in ([(a, 7), (b, 9)], [(b, 9), (a, 7)]):
        res = resolve_overlaps([r for r, _ in order], [k for _, k in order], 30, 30)
        by_id = {k: r.full(30, 30) for (_, k), r in zip(order, res)}
        assert by_id[9][7, 7] and not by_id[7][7, 7]  # the shared pixels went to id 9


def test_a_mask_that_loses_every_pixel_is_not_valid():
    dup = [as_result([5, 5, 15, 15]), as_result([5, 5, 15, 15])]  # one object boxed twice
    res = resolve_overlaps(dup, [1, 2], 30, 30)
    assert res[1].valid and res[1].mask.sum() == 100
    assert res[0].method == "none" and not res[0].valid and not res[0].mask.any()


def test_box_seed_depends_on_seed_and_annotation_and_takes_any_sign():
    seeds = {box_seed(s, a) for s in (0, 1, -1, 2**40) for a in (1, 2, -5, 2**40)}
    assert len(seeds) == 16
    assert all(0 <= v < 2**31 for v in seeds)
    assert box_seed(3, 4) == box_seed(3, 4)


def test_config_checks():
    for kw in ({"iters": 0}, {"valid_iou": 1.5}, {"margin": -1}, {"fallback": "blob"}, {"init": "x"}, {"color": "x"}):
        with pytest.raises(WsisError):
            GrabCutConfig(**kw)


def test_core_seeded_retry_only_replaces_invalid_masks_with_good_ones(tmp_path):
    from wsis_cli.boxes import xywh_to_xyxy
    from wsis_cli.images import read_image
    from wsis_cli.synth import synthesize

    ds = synthesize(tmp_path, n=10, size=128, seed=7)
    plain, retried = [], []
    for im in ds["images"]:
        anns = [a for a in ds["annotations"] if a["image_id"] == im["id"]]
        img = read_image(tmp_path / "images" / im["file_name"])
        boxes = xywh_to_xyxy([a["bbox"] for a in anns])
        seeds = [box_seed(0, a["id"]) for a in anns]
        plain += segment_boxes(img, boxes, seeds, GrabCutConfig(min_margin=2, retry_iou=0))
        retried += segment_boxes(img, boxes, seeds, GrabCutConfig(min_margin=2, retry_iou=0.7))
    rescued = 0
    for p, r in zip(plain, retried):
        if p.valid:  # a valid first mask is kept as it is
            assert r.valid and np.array_equal(p.mask, r.mask)
        elif r.valid:  # a retry replaces an invalid mask only when it clears the stricter bar
            assert r.method == "grabcut" and r.box_iou >= 0.7
            rescued += 1
        else:
            assert r.method == "ellipse" and np.array_equal(p.mask, r.mask)
    assert rescued >= 1


def test_grabcut_trimap_is_seeded_and_says_when_it_cannot_model():
    import cv2

    rng = np.random.default_rng(0)
    img = rng.integers(0, 20, (20, 20, 3)).astype(np.uint8)
    img[5:15, 5:15] += np.array([200, 30, 30], np.uint8)
    trimap = np.full((20, 20), cv2.GC_BGD, np.uint8)
    trimap[3:17, 3:17] = cv2.GC_PR_FGD
    fg = grabcut_trimap(img, trimap.copy(), iters=3, seed=1)
    assert fg.dtype == bool and fg.shape == (20, 20)
    assert fg[5:15, 5:15].all() and not fg[:3].any()  # the red square, nothing of the sure background
    np.testing.assert_array_equal(fg, grabcut_trimap(img, trimap.copy(), iters=3, seed=1))
    assert grabcut_trimap(img, np.full((20, 20), cv2.GC_PR_FGD, np.uint8), iters=3, seed=1) is None  # no background


def test_new_config_checks():
    for kw in ({"overlap": "front"}, {"downscale": "x"}):
        with pytest.raises(WsisError):
            GrabCutConfig(**kw)


def spiky_scene():
    """A red 30x30 square (rows/cols 40..70) with a 2 px wide red spike 20 px up from its top
    edge, on a noisy green background: its box is (40, 20, 70, 70)."""
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal([60, 140, 60], 8, size=(110, 110, 3)), 0, 255).astype(np.uint8)
    truth = np.zeros((110, 110), bool)
    truth[40:70, 40:70] = True
    truth[20:40, 54:56] = True
    img[truth] = np.clip(rng.normal([210, 40, 40], 8, size=(truth.sum(), 3)), 0, 255).astype(np.uint8)
    return img, truth


def test_opening_cuts_thin_parts_and_can_be_left_out():
    img, truth = spiky_scene()
    box = np.array([[40.0, 20.0, 70.0, 70.0]])
    opened = segment_boxes(img, box, [1], GrabCutConfig(opening=True))[0].full(110, 110)
    kept = segment_boxes(img, box, [1], GrabCutConfig(opening=False))[0].full(110, 110)
    assert not opened[22:38, 54:56].any()       # the spike is gone ...
    assert kept[22:38, 54:56].mean() > 0.9      # ... or kept
    assert iou(kept, truth) > iou(opened, truth)


@pytest.mark.parametrize("downscale, expected", [("side", (160, 8)), ("area", (700, 36))])
def test_downscaling_by_area_keeps_thin_crops_wide(monkeypatch, downscale, expected):
    from wsis_cli.pseudo import grabcut

    shapes = []
    real = grabcut.grabcut_trimap

    def spy(image, trimap, **kw):
        shapes.append(image.shape[:2])
        return real(image, trimap, **kw)

    monkeypatch.setattr(grabcut, "grabcut_trimap", spy)
    img = np.random.default_rng(0).integers(0, 255, (700, 200, 3)).astype(np.uint8)
    # a 20x500 px box, its crop (margin 0.2 of the side, >= 8 px) 36x700: the longer side to 160 px
    # leaves it 8 px wide; by area (25200 < 160**2 pixels) it is not scaled at all
    grabcut.grabcut_box(img, [90, 100, 110, 600], GrabCutConfig(min_margin=8, margin=0.2, downscale=downscale), 1)
    h, w = shapes[0]
    assert abs(h - expected[0]) <= 8 and abs(w - expected[1]) <= 2
