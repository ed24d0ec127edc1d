import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsis_cli.boxes import box_area, box_iou, mask_to_box, nms, xywh_to_xyxy, xyxy_to_xywh

coord = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
size = st.floats(0, 1e4, allow_nan=False, allow_infinity=False)


def test_conversions_hand_made():
    np.testing.assert_array_equal(xywh_to_xyxy([[1, 2, 3, 4]]), [[1, 2, 4, 6]])
    np.testing.assert_array_equal(xyxy_to_xywh([[1, 2, 4, 6]]), [[1, 2, 3, 4]])


@pytest.mark.parametrize("fn", [xywh_to_xyxy, xyxy_to_xywh, box_area])
def test_empty_arrays(fn):
    assert fn(np.zeros((0, 4))).shape[0] == 0


@given(coord, coord, size, size)
def test_roundtrip(x, y, w, h):
    back = xyxy_to_xywh(xywh_to_xyxy([[x, y, w, h]]))[0]
    np.testing.assert_allclose(back, [x, y, w, h], rtol=1e-9, atol=1e-6)


@given(st.lists(st.tuples(coord, coord, size, size), min_size=1, max_size=5),
       st.lists(st.tuples(coord, coord, size, size), min_size=1, max_size=5))
def test_iou_bounds_and_symmetry(a, b):
    a, b = xywh_to_xyxy(a), xywh_to_xyxy(b)
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert np.all(iou >= 0) and np.all(iou <= 1)
    np.testing.assert_allclose(iou, box_iou(b, a).T)


def test_iou_values():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


def test_mask_to_box_uses_pixel_edges():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:9] = True
    np.testing.assert_array_equal(mask_to_box(m), [3, 2, 9, 5])
    np.testing.assert_array_equal(mask_to_box(np.zeros((4, 4), bool)), [0, 0, 0, 0])


# ----------------------------------------------------------------------------- nms
def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]]
    scores = [0.5, 0.9, 0.7, 0.1]
    np.testing.assert_array_equal(nms(boxes, scores, iou_thr=0.5), [1, 3])
    np.testing.assert_array_equal(nms(boxes, scores, [1, 1, 2, 1], iou_thr=0.5), [1, 2, 3])  # class-wise
    assert nms(np.zeros((0, 4)), np.zeros(0)).shape == (0,)


def test_nms_suppresses_above_the_threshold_only_and_breaks_ties_by_index():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 20]]  # IoU exactly 0.5
    np.testing.assert_array_equal(nms(boxes, [0.5, 0.5], iou_thr=0.5), [0, 1])
    np.testing.assert_array_equal(nms(boxes, [0.5, 0.5], iou_thr=0.4), [0])
