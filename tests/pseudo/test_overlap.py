import numpy as np
import pytest

from wsis_cli.errors import WsisError
from wsis_cli.pseudo.grabcut import BoxResult
from wsis_cli.pseudo.overlap import OVERLAPS, colour_evidence, resolve

H = W = 100
# Two instances of known depth order: FRONT (red, the larger, its box reaching lower: y2 = 90) stands
# in front of BACK (blue, smaller, y2 = 60); they share the rows 40..60, columns 40..60.
FRONT = np.array([20.0, 40.0, 80.0, 90.0])
BACK = np.array([40.0, 10.0, 70.0, 60.0])


def box_result(box) -> BoxResult:
    x1, y1, x2, y2 = (int(v) for v in box)
    return BoxResult(np.ones((y2 - y1, x2 - x1), bool), (y1, x1), "grabcut", True, 1.0)


def picture(front_colour=(220, 30, 30), back_colour=(30, 30, 220)) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(128, 6, size=(H, W, 3)), 0, 255).astype(np.uint8)
    for box, colour in ((BACK, back_colour), (FRONT, front_colour)):  # the front one painted last
        x1, y1, x2, y2 = (int(v) for v in box)
        img[y1:y2, x1:x2] = np.clip(rng.normal(colour, 6, size=(y2 - y1, x2 - x1, 3)), 0, 255).astype(np.uint8)
    return img


def owner_of_shared(out) -> str:
    front, back = out[0].full(H, W), out[1].full(H, W)
    shared = np.zeros((H, W), bool)
    shared[40:60, 40:70] = True
    f, b = (front & shared).sum(), (back & shared).sum()
    assert not (front & back).any() and f + b == shared.sum()
    # evidence is averaged over 5x5 pixels: along the shared region's edges a row may go either way
    return "front" if f >= 0.9 * shared.sum() else "back" if b >= 0.9 * shared.sum() else "split"


@pytest.mark.parametrize("policy, expected", [("smaller", "back"), ("larger", "front"), ("lower-edge", "front"),
                                              ("evidence", "front")])
def test_each_policy_gives_the_shared_pixels_to_the_instance_it_says(policy, expected):
    results = [box_result(FRONT), box_result(BACK)]
    out = resolve(results, [1, 2], H, W, policy=policy, boxes=np.stack([FRONT, BACK]), image=picture())
    assert owner_of_shared(out) == expected
    assert all(r.valid and r.method == "grabcut" for r in out)
    # pixels nobody else claims stay with their instance
    assert out[0].full(H, W)[80:90, 20:80].all() and out[1].full(H, W)[10:40, 40:70].all()


def test_evidence_follows_the_colour_not_the_geometry():
    # the same boxes, but the picture shows the blue (back box) instance over the red one
    img = picture()
    img[40:60, 40:70] = np.clip(np.random.default_rng(1).normal((30, 30, 220), 6, size=(20, 30, 3)), 0, 255)
    out = resolve([box_result(FRONT), box_result(BACK)], [1, 2], H, W, policy="evidence",
                  boxes=np.stack([FRONT, BACK]), image=img)
    assert owner_of_shared(out) == "back"


def test_none_keeps_the_masks_overlapping():
    results = [box_result(FRONT), box_result(BACK)]
    out = resolve(results, [1, 2], H, W, policy="none")
    assert out[0] is results[0] and out[1] is results[1]
    assert (out[0].full(H, W) & out[1].full(H, W)).sum() == 20 * 30


@pytest.mark.parametrize("policy", ["smaller", "larger", "lower-edge", "evidence"])
def test_ties_do_not_depend_on_the_order(policy):
    a, b = np.array([10.0, 10.0, 50.0, 50.0]), np.array([30.0, 10.0, 70.0, 50.0])  # same size, same bottom edge
    img = np.full((H, W, 3), 128, np.uint8)  # no colour evidence either way
    one = resolve([box_result(a), box_result(b)], [5, 9], H, W, policy=policy, boxes=np.stack([a, b]), image=img)
    two = resolve([box_result(b), box_result(a)], [9, 5], H, W, policy=policy, boxes=np.stack([b, a]), image=img)
    np.testing.assert_array_equal(one[1].full(H, W), two[0].full(H, W))  # id 9 ...
    assert one[1].full(H, W)[10:50, 30:50].all()                       # ... takes the shared pixels


@pytest.mark.parametrize("policy", ["smaller", "larger", "lower-edge", "evidence"])
def test_a_mask_that_loses_every_pixel_becomes_none(policy):
    box = np.array([20.0, 20.0, 60.0, 60.0])
    out = resolve([box_result(box), box_result(box)], [1, 2], H, W, policy=policy, boxes=np.stack([box, box]),
                  image=picture())
    assert [r.method for r in out] == ["none", "grabcut"] and not out[0].valid and not out[0].mask.any()


def test_policy_checks_and_what_each_needs():
    results = [box_result(FRONT), box_result(BACK)]
    with pytest.raises(WsisError, match="--overlap must be one of"):
        resolve(results, [1, 2], H, W, policy="front")
    with pytest.raises(WsisError, match="needs the boxes"):
        resolve(results, [1, 2], H, W, policy="lower-edge")
    with pytest.raises(WsisError, match="needs the image"):
        resolve(results, [1, 2], H, W, policy="evidence", boxes=np.stack([FRONT, BACK]))
    assert set(OVERLAPS) == {"smaller", "larger", "lower-edge", "evidence", "none"}
    assert resolve([], [], H, W, policy="evidence") == []  # nothing to resolve needs nothing


def test_colour_evidence_is_positive_on_the_instance_and_negative_around_it():
    img = picture()
    r = box_result(FRONT)
    ev, (r0, c0) = colour_evidence(img, r.mask, r.offset, FRONT, r.mask)
    full = np.full((H, W), np.nan, np.float32)
    full[r0:r0 + ev.shape[0], c0:c0 + ev.shape[1]] = ev
    assert np.nanmin(full[50:85, 25:75]) > 0            # red, inside the box
    assert ev.shape == (H - r0, 94 - c0) and (r0, c0) == (28, 6)  # the box widened by a fifth (+2 px)
    assert np.nanmax(full[30:38, 8:18]) < 0                   # grey, outside the box
