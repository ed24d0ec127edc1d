import numpy as np
import pytest

from wsis_cli.boxes import mask_to_box
from wsis_cli.metrics import mask_iou
from wsis_cli.pseudo.fallback import box_mask, ellipse_mask
from wsis_cli.pseudo.grabcut import GrabCutConfig, box_seed, grabcut_box, resolve_overlaps, segment_boxes
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
    assert iou(res.mask, disc) > 0.9
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
    res = segment_boxes(img, box, [1], CFG)[0]
    assert res.method == "ellipse" and not res.valid
    assert 0.0 < res.box_iou < 0.5
    np.testing.assert_array_equal(res.mask, ellipse_mask(box[0], 120, 120))
    res = segment_boxes(img, box, [1], GrabCutConfig(fallback="box"))[0]
    assert res.method == "box" and not res.valid
    np.testing.assert_array_equal(res.mask, box_mask(box[0], 120, 120))
    res = segment_boxes(img, box, [1], GrabCutConfig(fallback="none"))[0]
    assert res.method == "grabcut" and not res.valid and iou(res.mask, disc) > 0.8  # GrabCut's own mask, kept
    res = segment_boxes(img, box, [1], GrabCutConfig(valid_iou=0.1))[0]
    assert res.method == "grabcut" and res.valid  # the threshold decides


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
    x1, y1, x2, y2 = mask_to_box(res.mask)
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
    assert iou(res.mask, disc) > 0.95
    assert not res.mask[0, 0] and not res.mask[-1, -1]  # the background corners stay out


def test_overlaps_go_to_the_smaller_instance():
    big = box_mask([0, 0, 20, 20], 30, 30)
    small = box_mask([10, 10, 25, 25], 30, 30)
    out = resolve_overlaps([big, None, small])
    assert out[1] is None
    np.testing.assert_array_equal(out[2], small)
    np.testing.assert_array_equal(out[0], big & ~small)
    assert not (out[0] & out[2]).any()
    assert resolve_overlaps([big]) == [big]


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
        plain += segment_boxes(img, boxes, seeds, GrabCutConfig(min_margin=2))
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
