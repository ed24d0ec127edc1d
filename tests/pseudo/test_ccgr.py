"""CCGR box refinement on hand-made score maps: box sums, the objectives, the stop rules, batching."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsis_cli.boxes import box_iou, mask_to_box
from wsis_cli.errors import WsisError
from wsis_cli.pseudo.ccgr import CCGRConfig, box_sums, integral_images, refine_boxes, stop_points
from wsis_cli.pseudo.ccgr_masks import crop_masks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- helpers
def disc(h, w, cx, cy, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r ** 2


def rect(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def blurred(mask, sigma=1.0):
    return np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma), 0, 1)


def scaled(box, f):
    """``box`` scaled by ``f`` about its centre."""
    box = np.asarray(box, dtype=np.float64)
    c, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) * f / 2
    return np.concatenate([c - half, c + half])


def iou(a, b):
    return float(box_iou(np.asarray(a)[None], np.asarray(b)[None])[0, 0])


def sums(planes, plane_index, boxes, *, grad=False):
    integral = integral_images(planes)
    sizes = torch.tensor([[planes[p].shape[1], planes[p].shape[0]] for p in plane_index], dtype=torch.float64)
    b = torch.tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), requires_grad=grad)
    s, a = box_sums(integral, torch.tensor(plane_index, dtype=torch.int64), b, sizes)
    return s, a, b


def refine(plane, boxes, points=None, stop=None, **kw):
    """refine_boxes on one plane; ``stop`` turns the points into stop points by that rule."""
    cfg = CCGRConfig(**kw)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    others = None if stop is None else stop_points(points, boxes, [0] * len(boxes), stop)
    return refine_boxes([plane], np.zeros(len(boxes), dtype=np.int64), boxes, cfg, points=points, others=others)


# ----------------------------------------------------------------------------- box sums
def test_box_sums_equal_numpy_sums_on_integer_boxes():
    rng = np.random.default_rng(0)
    planes = [rng.random((7, 9)), rng.random((12, 5)), rng.random((4, 4))]  # different sizes, one tensor
    integral = integral_images(planes)
    assert integral.flat.shape == (8 * 10 + 13 * 6 + 5 * 5,) and integral.flat.dtype == torch.float64  # unpadded
    assert integral.offset.tolist() == [0, 80, 158] and integral.sizes.tolist() == [[9, 7], [5, 12], [4, 4]]
    for p, pl in enumerate(planes):  # the same float64 sums, in the same order, as numpy's
        h, w = pl.shape
        block = integral.flat[integral.offset[p]:integral.offset[p] + (h + 1) * (w + 1)].view(h + 1, w + 1).numpy()
        np.testing.assert_array_equal(block[1:, 1:], np.cumsum(np.cumsum(pl, axis=0), axis=1))
        assert not block[0].any() and not block[:, 0].any()
    boxes, index, want = [], [], []
    for p, pl in enumerate(planes):
        h, w = pl.shape
        for x1, y1, x2, y2 in [(0, 0, w, h), (1, 2, w - 1, h), (0, h - 1, 1, h), (2, 1, 3, 3)]:
            boxes.append([x1, y1, x2, y2])
            index.append(p)
            want.append(pl[y1:y2, x1:x2].sum())
    s, a, _ = sums(planes, index, boxes)
    np.testing.assert_allclose(s.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.numpy(), [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes])


def test_fractional_boxes_get_the_exact_area_weighted_sum():
    plane = np.arange(30, dtype=np.float64).reshape(5, 6) / 30  # constant on each pixel
    box = [0.25, 1.5, 3.75, 4.2]
    cover_x = np.clip(np.minimum(np.arange(1, 7), box[2]) - np.maximum(np.arange(6), box[0]), 0, None)
    cover_y = np.clip(np.minimum(np.arange(1, 6), box[3]) - np.maximum(np.arange(5), box[1]), 0, None)
    want = (plane * cover_y[:, None] * cover_x[None, :]).sum()
    s, a, _ = sums([plane], [0], [box])
    assert s.item() == pytest.approx(want, abs=1e-12)
    assert a.item() == pytest.approx(3.5 * 2.7)


def test_boxes_partly_outside_the_plane_are_clipped():
    rng = np.random.default_rng(1)
    small, big = rng.random((6, 8)), rng.random((20, 30))
    # the small plane's box reaches past it: nothing beyond the plane may count
    s, a, _ = sums([small, big], [0, 0, 0, 1], [[-3, -2, 4, 3], [5, 4, 40, 40], [10, 10, 12, 12], [-1, 15, 31, 25]])
    np.testing.assert_allclose(s.numpy(), [small[:3, :4].sum(), small[4:, 5:].sum(), 0.0, big[15:, :].sum()],
                               atol=1e-12)
    np.testing.assert_allclose(a.numpy(), [12, 6, 0, 150])


def line_sum(plane, x, y1, y2):
    """Integral of the piecewise-constant plane along the vertical line at ``x`` from y1 to y2."""
    edges = np.arange(plane.shape[0] + 1)
    rows = np.clip(np.minimum(edges[1:], y2) - np.maximum(edges[:-1], y1), 0, None)
    return float((plane[:, int(np.floor(x))] * rows).sum())


def test_gradient_is_the_line_sum_along_each_side():
    rng = np.random.default_rng(2)
    plane = rng.random((10, 12))
    box = [2.3, 1.6, 8.7, 7.4]
    s, _, b = sums([plane, rng.random((15, 15))], [0], [box], grad=True)
    s.sum().backward()
    g = b.grad[0].numpy()
    want = [-line_sum(plane, box[0], box[1], box[3]), -line_sum(plane.T, box[1], box[0], box[2]),
            line_sum(plane, box[2], box[1], box[3]), line_sum(plane.T, box[3], box[0], box[2])]
    np.testing.assert_allclose(g, want, rtol=1e-9)
    for k in range(4):  # and a finite difference agrees
        lo, hi = list(box), list(box)
        lo[k] -= 1e-4
        hi[k] += 1e-4
        fd = (sums([plane], [0], [hi])[0] - sums([plane], [0], [lo])[0]).item() / 2e-4
        assert fd == pytest.approx(g[k], rel=1e-6)


def test_gradient_on_the_plane_borders():
    # a side on the border gets the line sum just inside it, whatever the padding: a box on the border
    # can move off it, and a small plane in a batch gets the gradient it gets alone
    rng = np.random.default_rng(4)
    plane = rng.random((6, 8))
    box = [0.0, 0.0, 8.0, 6.0]
    want = [-plane[:, 0].sum(), -plane[0].sum(), plane[:, -1].sum(), plane[-1].sum()]
    for planes in ([plane], [plane, rng.random((10, 13))]):
        s, _, b = sums(planes, [0], [box], grad=True)
        s.sum().backward()
        np.testing.assert_allclose(b.grad[0].numpy(), want, rtol=1e-12, err_msg=f"{len(planes)} planes")


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9),
       box=st.lists(st.floats(-5, 15, allow_nan=False), min_size=4, max_size=4), seed=st.integers(0, 2 ** 16))
def test_box_sums_stay_within_the_plane(h, w, box, seed):
    plane = np.random.default_rng(seed).random((h, w))
    x1, x2 = sorted(box[::2])
    y1, y2 = sorted(box[1::2])
    s, a, _ = sums([plane, np.ones((11, 3))], [0], [[x1, y1, x2, y2]])
    cw = max(0.0, min(x2, w) - max(x1, 0.0))
    ch = max(0.0, min(y2, h) - max(y1, 0.0))
    assert a.item() == pytest.approx(cw * ch, abs=1e-9)
    assert 0 <= a.item() <= h * w + 1e-9
    assert -1e-9 <= s.item() <= plane.sum() + 1e-9
    assert s.item() <= a.item() + 1e-9  # scores are at most 1


# ----------------------------------------------------------------------------- objectives
# sigma 0.7: the pixel just outside an edge scores ~0.2 > t = 0.1, so `mass` takes it in (1 px over)
DISC, DISC_TRUE = blurred(disc(64, 64, 32, 30, 14), 0.7), mask_to_box(disc(64, 64, 32, 30, 14))
RECT, RECT_TRUE = blurred(rect(64, 64, 8, 10, 56, 50), 0.7), np.array([8.0, 10, 56, 50])
THIN = blurred(rect(48, 52, 8, 14, 40, 28), 0.7)  # 14 px high: the 50% start's ring reaches its border
THIN_TRUE = np.array([8.0, 14, 40, 28])


@pytest.mark.parametrize("plane,truth", [(DISC, DISC_TRUE), (RECT, RECT_TRUE)], ids=["disc", "rect"])
def test_mass_grows_a_shrunken_box_onto_the_object(plane, truth):
    start = scaled(truth, 0.5)
    out = refine(plane, start)[0]  # the library defaults
    assert iou(start, truth) == pytest.approx(0.25)
    assert iou(out, truth) >= 0.9, out
    outward = np.array([-1, -1, 1, 1]) * (out - truth)
    assert (outward > -0.5).all() and (outward < 1.5).all(), out  # holds the object, at most the blur's tail more


@pytest.mark.parametrize("plane,truth", [(DISC, DISC_TRUE), (THIN, THIN_TRUE)], ids=["disc", "rect"])
def test_gap_improves_on_the_start(plane, truth):
    start = scaled(truth, 0.5)
    out = refine(plane, start, objective="gap", steps=100)[0]
    assert iou(out, truth) > iou(start, truth) + 0.2, out


def test_gap_is_flat_while_the_ring_is_inside_the_object():
    # the module docstring's reason for `mass`: the 50% start's ring lies in the flat inside of a large
    # rectangle, so gap has no gradient and the box stays where it started
    start = scaled(RECT_TRUE, 0.5)
    out = refine(RECT, start, objective="gap", steps=50)[0]
    np.testing.assert_allclose(out, start, atol=0.5)


@pytest.mark.parametrize("plane,truth", [(DISC, DISC_TRUE), (RECT, RECT_TRUE)], ids=["disc", "rect"])
def test_mass_shrinks_a_box_that_is_too_large(plane, truth):
    start = scaled(truth, 1.8)  # the rectangle's reaches past all four image borders
    out = refine(plane, start, steps=80)[0]
    assert iou(start, truth) < 0.35
    assert iou(out, truth) >= 0.9, out


def test_a_side_on_the_image_border_moves_off_it():
    # a box whose sides start on the border of an empty map shrinks from all four
    out = refine(np.zeros((20, 30)), [[0.0, 0, 30, 20]], steps=60)[0]
    assert out[2] - out[0] < 2 and out[3] - out[1] < 2, out
    assert 5 < out[0] < 25 and 5 < out[1] < 15, out  # every side moved, not one side all the way


def test_no_steps_returns_the_start():
    start = np.array([[3.5, 4.0, 10.0, 12.25]])
    np.testing.assert_array_equal(refine(DISC, start, steps=0), start)
    assert refine_boxes([], np.zeros(0), np.zeros((0, 4)), CCGRConfig()).shape == (0, 4)


# ----------------------------------------------------------------------------- stop rules
# two same-class squares that touch at x = 24, a point at each centre
A_TRUE, B_TRUE = np.array([8.0, 12, 24, 28]), np.array([24.0, 12, 40, 28])
PAIR = blurred(rect(40, 48, 8, 12, 24, 28) | rect(40, 48, 24, 12, 40, 28), 0.7)
PAIR_POINTS = np.array([[16.0, 20.0], [32.0, 20.0]])
PAIR_START = np.stack([scaled(A_TRUE, 0.5), scaled(B_TRUE, 0.5)])
# a side moves at most ~lr x steps / 2 start sides (Adam, cosine): 200 x 0.02 -> 2 sides; a square's box
# must go 1.5 sides to the other's point and 2.5 to its far edge
FAST = dict(steps=100, lr=0.06)


def contains(box, p):
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def test_point_rule_keeps_the_other_point_out():
    out = refine(PAIR, PAIR_START, PAIR_POINTS, stop="point", **FAST)
    assert not contains(out[0], PAIR_POINTS[1]) and not contains(out[1], PAIR_POINTS[0])
    assert out[0][2] == pytest.approx(32, abs=0.01) and out[1][0] == pytest.approx(16, abs=0.01)  # stopped at it
    assert iou(out[0], out[1]) > 0.3  # so the two boxes share half of each other's square
    assert contains(out[0], PAIR_POINTS[0]) and contains(out[1], PAIR_POINTS[1])


def test_split_rule_stops_at_the_contact_line():
    out = refine(PAIR, PAIR_START, PAIR_POINTS, stop="split", **FAST)
    assert iou(out[0], A_TRUE) >= 0.8 and iou(out[1], B_TRUE) >= 0.8, out
    assert out[0][2] == pytest.approx(24, abs=0.5) and out[1][0] == pytest.approx(24, abs=0.5)
    assert iou(out[0], out[1]) < 0.05


def test_without_points_a_box_merges_both_squares():
    out = refine(PAIR, PAIR_START[:1], np.full((1, 2), np.nan), stop="split", **FAST)[0]
    union = np.array([8.0, 12, 40, 28])
    assert contains(out, PAIR_POINTS[1]) and iou(out, union) >= 0.8, out


def test_a_box_keeps_its_own_point():
    # the point lies 8 px right of the disc, where the map is 0: mass would leave it, the point holds the side
    point = np.array([[54.0, 30.0]])
    out = refine(DISC, scaled(DISC_TRUE, 0.5), point, stop="point", steps=100)[0]
    assert contains(out, point[0]) and out[2] == pytest.approx(54.0)
    assert out[0] == pytest.approx(DISC_TRUE[0], abs=1) and out[1] == pytest.approx(DISC_TRUE[1], abs=1)
    # a start that does not hold its point is moved to take it in, even after one step
    out = refine(DISC, [[20.0, 18, 30, 26]], [[5.0, 50.0]], stop="point", steps=1)[0]
    assert contains(out, (5.0, 50.0))


def test_boxes_stay_inside_the_image_and_at_least_one_pixel():
    starts = np.array([[-5.0, -5, 8, 6], [25, 15, 40, 30], [10, 10, 10.2, 10.3], [0, 0, 30, 20]])
    clipped = np.clip(starts, 0, [30, 20, 30, 20])
    for plane, grows in ((np.zeros((20, 30)), False), (np.ones((20, 30)), True)):
        out = refine(plane, starts, steps=20)
        assert (out[:, :2] >= 0).all() and (out[:, 2] <= 30).all() and (out[:, 3] <= 20).all(), out
        assert (out[:, 2:] - out[:, :2] >= 1 - 1e-9).all(), out
        area, before = np.prod(out[:, 2:] - out[:, :2], axis=1), np.prod(clipped[:, 2:] - clipped[:, :2], axis=1)
        assert ((area >= before) if grows else (area[[0, 1, 3]] < before[[0, 1, 3]])).all(), out


def sequential_stop(boxes, old, others, others_mask):
    """The stop rule as first written: every stop point in turn, the side that crossed it set back."""
    for q in range(others.shape[1]):
        px, py = others[:, q, 0], others[:, q, 1]
        inside_new = (boxes[:, 0] <= px) & (px <= boxes[:, 2]) & (boxes[:, 1] <= py) & (py <= boxes[:, 3])
        inside_old = (old[:, 0] <= px) & (px <= old[:, 2]) & (old[:, 1] <= py) & (py <= old[:, 3])
        hit = others_mask[:, q] & inside_new & ~inside_old
        inf = torch.full_like(px, float("inf"))
        over = torch.stack([torch.where(px < old[:, 0], px - boxes[:, 0], inf),
                            torch.where(py < old[:, 1], py - boxes[:, 1], inf),
                            torch.where(px > old[:, 2], boxes[:, 2] - px, inf),
                            torch.where(py > old[:, 3], boxes[:, 3] - py, inf)], dim=1)
        side = over.argmin(dim=1)
        limit = torch.stack([px + 1e-3, py + 1e-3, px - 1e-3, py - 1e-3], dim=1)
        rows = hit.nonzero().squeeze(1)
        boxes[rows, side[rows]] = limit[rows, side[rows]]


@pytest.mark.parametrize("seed", range(5))
def test_stop_rule_in_rounds_equals_the_point_by_point_rule(seed):
    # boxes that grew past several stop points in one step: the rounds give the same boxes, bit for bit
    from wsis_cli.pseudo.ccgr import _stop

    rng = np.random.default_rng(seed)
    n, q = 300, 6
    c = rng.uniform(20, 80, (n, 2))
    old = np.concatenate([c - rng.uniform(2, 10, (n, 2)), c + rng.uniform(2, 10, (n, 2))], axis=1)
    new = old + rng.uniform(-12, 12, (n, 4)) * [-1, -1, 1, 1]
    pts = c[:, None] + rng.uniform(-20, 20, (n, q, 2))
    others, mask = torch.from_numpy(pts), torch.from_numpy(rng.random((n, q)) < 0.8)
    x, y = pts[..., 0], pts[..., 1]
    took = [(b[:, 0, None] <= x) & (x <= b[:, 2, None]) & (b[:, 1, None] <= y) & (y <= b[:, 3, None])
            for b in (new, old)]
    several = ((took[0] & ~took[1] & mask.numpy()).sum(axis=1) > 1).sum()
    want = torch.from_numpy(new.copy())
    sequential_stop(want, torch.from_numpy(old), others, mask)
    got = torch.from_numpy(new.copy())
    _stop(got, torch.from_numpy(old), others, mask)
    assert (want != torch.from_numpy(new)).any(dim=1).sum() > 50 and several > 10, several  # some took in several
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- optimiser
def test_adam_is_torch_optim_adam_under_cosine_annealing_bit_for_bit():
    from wsis_cli.pseudo.ccgr import _Adam

    rng = np.random.default_rng(5)
    steps, lr = 37, 0.02
    ref = torch.zeros((6, 4), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([ref], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    ours = torch.zeros((6, 4), dtype=torch.float64)
    mine = _Adam(ours, lr, steps)
    for _ in range(steps):
        grad = torch.from_numpy(rng.normal(size=(6, 4)) * rng.choice([1e-6, 1.0, 1e3]))
        ref.grad = grad.clone()
        opt.step()
        sched.step()
        mine.step(grad)
        assert torch.equal(ours, ref.detach()) and mine.lr == opt.param_groups[0]["lr"]


# ----------------------------------------------------------------------------- batching
def batch_scene():
    """Planes of different sizes (padded differently in one batch than alone), objects touching the
    right and bottom borders of the smaller ones, two touching same-class objects with points, one box
    without a point."""
    planes = [blurred(disc(30, 34, 26, 24, 9)),                                   # touches right + bottom
              blurred(rect(44, 40, 4, 6, 20, 30) | rect(44, 40, 20, 6, 34, 30)),  # two touching, points
              blurred(rect(36, 56, 30, 10, 56, 36)),                              # corner object, no point
              blurred(disc(44, 56, 20, 20, 12))]                                  # the largest plane
    truths = np.array([[16, 14, 34, 30], [4, 6, 20, 30], [20, 6, 34, 30], [30, 10, 56, 36], [8, 8, 32, 32]],
                      dtype=np.float64)
    starts = np.stack([scaled(t, 0.5) for t in truths])
    starts[3] = [40, 22, 56, 36]  # on the bottom and right borders of a plane 8 rows shorter than the largest
    index = np.array([0, 1, 1, 2, 3])
    points = np.array([[25.0, 22.0], [12.0, 18.0], [27.0, 18.0], [np.nan, np.nan], [20.0, 20.0]])
    return planes, index, starts, points


@pytest.mark.parametrize("objective,stop", [("mass", "split"), ("gap", "point")])
def test_batched_equals_per_box(objective, stop):
    planes, index, starts, points = batch_scene()
    cfg = CCGRConfig(steps=20, objective=objective, stop=stop)
    others = stop_points(points, starts, index, stop)
    together = refine_boxes(planes, index, starts, cfg, points=points, others=others)
    assert not np.allclose(together, starts)
    for i in range(len(starts)):
        alone = refine_boxes([planes[index[i]]], [0], starts[i:i + 1], cfg, points=points[i:i + 1],
                             others=[others[i]])
        np.testing.assert_allclose(alone[0], together[i], atol=1e-6, rtol=0, err_msg=f"box {i}")


def test_chunks_give_the_same_boxes():
    planes, index, starts, points = batch_scene()
    cfg = CCGRConfig(steps=20)
    others = stop_points(points, starts, index, cfg.stop)
    whole = refine_boxes(planes, index, starts, cfg, points=points, others=others)
    calls = []
    for small in (replace(cfg, chunk=2), replace(cfg, chunk_pixels=44 * 56 * 2), replace(cfg, chunk_pixels=1)):
        got = refine_boxes(planes, index, starts, small, points=points, others=others,
                           progress=lambda d, n: calls.append((d, n)))
        np.testing.assert_allclose(got, whole, atol=1e-6, rtol=0)
        assert calls[-1] == (5, 5)
    # order of the boxes does not matter either
    perm = np.array([4, 2, 0, 3, 1])
    got = refine_boxes(planes, index[perm], starts[perm], cfg, points=points[perm], others=[others[i] for i in perm])
    np.testing.assert_allclose(got, whole[perm], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- stop points
def test_point_rule_stop_points_are_the_other_points_of_the_group():
    points = np.array([[1.0, 1], [5, 5], [9, 1], [3, 3]])
    boxes = np.array([[0.0, 0, 2, 2], [4, 4, 6, 6], [8, 0, 10, 2], [2, 2, 4, 4]])
    out = stop_points(points, boxes, ["a", "a", "a", "b"], "point")
    np.testing.assert_array_equal(out[0], [[5, 5], [9, 1]])
    np.testing.assert_array_equal(out[1], [[1, 1], [9, 1]])
    assert out[3].shape == (0, 2)  # alone in its group


def test_split_rule_divides_by_box_size():
    p, q = np.array([0.0, 0.0]), np.array([10.0, 5.0])
    boxes = np.array([[-3.0, -4, 3, 4], [8.5, 3, 11.5, 7]])  # half diagonals 5 and 2.5
    out = stop_points(np.stack([p, q]), boxes, [7, 7], "split")
    np.testing.assert_allclose(out[0], [p + (q - p) * 5 / 7.5])
    np.testing.assert_allclose(out[1], [q + (p - q) * 2.5 / 7.5])
    np.testing.assert_allclose(out[0], out[1])  # both stop at the same point: where they meet


def test_boxes_without_a_point_block_no_one():
    points = np.array([[1.0, 1], [np.nan, np.nan], [9, 1]])
    boxes = np.array([[0.0, 0, 2, 2], [4, 0, 6, 2], [8, 0, 10, 2]])
    for stop in ("point", "split"):
        out = stop_points(points, boxes, [0, 0, 0], stop)
        assert out[0].shape == (1, 2) and out[2].shape == (1, 2)  # only the other pointed box
        assert not np.isnan(np.concatenate(out)).any()
    # the pointless box itself is held off the others' own points (it has no point to split from)
    np.testing.assert_array_equal(stop_points(points, boxes, [0, 0, 0], "split")[1], [[1, 1], [9, 1]])
    np.testing.assert_array_equal(stop_points(np.full((2, 2), np.nan), boxes[:2], [0, 0], "split")[0],
                                  np.zeros((0, 2)))


# ----------------------------------------------------------------------------- masks
def test_crop_masks_threshold_inside_the_box_only():
    plane = np.random.default_rng(3).random((12, 14)).astype(np.float32)
    boxes = np.array([[2.4, 3.6, 7.4, 9.2], [0.0, 0.0, 14.0, 12.0], [5.2, 5.2, 5.3, 5.3]])
    masks = crop_masks(plane, boxes, 0.5)
    assert len(masks) == 3 and all(m.shape == (12, 14) and m.dtype == bool for m in masks)
    inside = np.zeros((12, 14), bool)
    inside[4:9, 2:7] = True  # pixel centres in the box: columns 2..6, rows 4..8
    np.testing.assert_array_equal(masks[0], inside & (plane > 0.5))
    np.testing.assert_array_equal(masks[1], plane > 0.5)
    assert masks[2].sum() <= 1 and not masks[2][:5].any()  # a box with no pixel centre: one pixel at most
    assert crop_masks(plane, np.zeros((0, 4)), 0.5) == []


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [dict(objective="nope"), dict(stop="nope"), dict(threshold=1.0),
                                 dict(threshold=-0.1), dict(context=1.0), dict(steps=-1), dict(lr=0.0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(WsisError):
        CCGRConfig(**bad)
