"""Proposals and Eq. 4: straddling on hand-made segmentations, the ranking on a hand-made map,
bags that hold their peak, top-k."""

from __future__ import annotations

import numpy as np
import pytest

from wsis_cli.errors import WsisError
from wsis_cli.pseudo.proposals import (BACKGROUND_WEIGHT, ImageProposals, ProposalConfig, background_share,
                                       rank_score, seed_boxes, selective_search, straddling)

H, W = 40, 60
OBJECT = np.array([20.0, 10, 40, 30])  # x1, y1, x2, y2
HALF_OFF = np.array([30.0, 10, 50, 30])  # half on the object, half on background
PART = np.array([25.0, 15, 35, 25])  # inside the object
BOXES = np.stack([OBJECT, HALF_OFF, PART])


def object_segmentation() -> np.ndarray:
    """Two superpixels: background 0, the object 1."""
    labels = np.zeros((H, W), dtype=np.int32)
    labels[10:30, 20:40] = 1
    return labels


def object_map() -> np.ndarray:
    plane = np.zeros((H, W), dtype=np.float32)
    plane[10:30, 20:40] = 1.0
    return plane


def brute_straddling(labels, box):
    x1, y1, x2, y2 = (int(v) for v in box)
    inside = np.zeros_like(labels, dtype=bool)
    inside[y1:y2, x1:x2] = True
    cut = sum(min((inside & (labels == s)).sum(), ((~inside) & (labels == s)).sum()) for s in np.unique(labels))
    return 1.0 - cut / inside.sum()


def test_straddling_on_a_hand_made_segmentation():
    labels = object_segmentation()
    ss = straddling(labels, BOXES)
    # the object box cuts no superpixel; the half-off box cuts the object in two halves (200 of 400 px
    # inside) and takes 200 px of the background; the part box takes 100 of the object's 400
    assert ss[0] == pytest.approx(1.0)
    assert ss[1] == pytest.approx(1 - (200 + 200) / 400)
    assert ss[2] == pytest.approx(1 - 100 / 100)
    rng = np.random.default_rng(0)
    random_labels = rng.integers(0, 5, size=(H, W)).astype(np.int32)
    for box in (OBJECT, HALF_OFF, PART, np.array([0.0, 0, W, H])):
        assert straddling(random_labels, box[None])[0] == pytest.approx(brute_straddling(random_labels, box))
    assert straddling(labels, np.array([[0.0, 0, W, H]]))[0] == pytest.approx(1.0)  # the whole image
    # a shrunk segmentation: the boxes are scaled onto it
    half = labels[::2, ::2]
    assert straddling(half, BOXES, scale=0.5) == pytest.approx(ss)
    assert straddling(labels, np.zeros((0, 4))).shape == (0,)


def test_background_share_is_the_mean_of_one_minus_the_map():
    plane = object_map()
    assert background_share(plane, BOXES) == pytest.approx([0.0, 0.5, 0.0])
    assert background_share(plane, np.array([[0.0, 0, W, H]]))[0] == pytest.approx(1 - 400 / (H * W))
    ramp = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    box = np.array([[5.0, 3, 17, 21]])
    assert background_share(ramp, box)[0] == pytest.approx(1 - ramp[3:21, 5:17].mean())


def test_eq4_ranks_the_box_over_the_object_first():
    plane = object_map()
    # objectness held fixed: the background term alone puts the object box over the half-off
    # box; a box on a part has no background either, so it ties with the object box
    r = rank_score(np.full(3, 0.5), plane, BOXES)
    assert r[0] > r[1] and r[0] == pytest.approx(r[2])
    assert r[0] - r[1] == pytest.approx(BACKGROUND_WEIGHT * 0.5)
    # objectness varied (straddling on the hand-made segmentation): the part box, which cuts the
    # object, drops below the object box too
    r = rank_score(straddling(object_segmentation(), BOXES), plane, BOXES)
    assert r[0] > r[1] and r[0] > r[2]
    assert int(np.argmax(r)) == 0
    # a blurred map favours a central part in Eq. 4's second term; objectness still wins for the object
    import cv2

    blurred = cv2.GaussianBlur(plane, (0, 0), 4.0)
    assert background_share(blurred, BOXES)[2] < background_share(blurred, BOXES)[0]
    r = rank_score(straddling(object_segmentation(), BOXES), blurred, BOXES)
    assert int(np.argmax(r)) == 0


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A 60x80 image: a red square (20..40 x 25..50) and a blue square (20..40 x 55..75) on grey."""
    rgb = np.full((60, 80, 3), 110, dtype=np.uint8)
    rgb += np.random.default_rng(1).integers(0, 8, size=rgb.shape, dtype=np.uint8)
    rgb[20:40, 25:45] = (210, 40, 40)
    rgb[20:40, 55:75] = (40, 40, 210)
    plane = np.zeros((60, 80), dtype=np.float32)
    plane[20:40, 25:45] = 1.0
    plane[20:40, 55:75] = 1.0
    return rgb, plane


def test_bags_hold_their_peak_and_the_object_box_leads():
    rgb, plane = scene()
    cfg = ProposalConfig(top=5)
    props = ImageProposals(rgb, cfg)
    assert props.boxes.shape[1] == 4 and len(props.boxes) > 0
    assert (props.boxes[:, [0, 2]] <= 80).all() and (props.boxes[:, [1, 3]] <= 60).all()
    point = (35.0, 30.0)
    seed = np.array([30.0, 25, 40, 35])  # the peak's region: a part of the red square
    boxes, ranks = props.bag(plane, seed=seed, point=point)
    assert 1 <= len(boxes) <= 5 and list(ranks) == sorted(ranks, reverse=True)
    assert ((boxes[:, 0] <= point[0]) & (point[0] <= boxes[:, 2]) & (boxes[:, 1] <= point[1])
            & (point[1] <= boxes[:, 3])).all()
    best = boxes[0]
    assert np.abs(best - [25, 20, 45, 40]).max() <= 2  # the red square, grown from its part
    # another point of the class in the blue square: no proposal may hold both
    other = (65.0, 30.0)
    boxes2, _ = props.bag(plane, seed=seed, point=point, others=[other])
    assert not ((boxes2[:, 0] <= other[0]) & (other[0] <= boxes2[:, 2])).any()
    # top-k
    assert len(props.bag(plane, seed=seed, point=point)[0]) == 5
    assert len(ImageProposals(rgb, ProposalConfig(top=2)).bag(plane, seed=seed, point=point)[0]) == 2


def test_a_seed_without_a_point_takes_the_box_and_its_highest_overlaps():
    rgb, plane = scene()
    props = ImageProposals(rgb, ProposalConfig(top=4))
    seed = np.array([55.0, 20, 75, 40])
    boxes, ranks = props.bag(plane, seed=seed)
    assert len(boxes) == 4
    assert (np.abs(boxes - seed).max(axis=1) < 0.01).any()  # the box itself
    from wsis_cli.boxes import box_iou

    assert (box_iou(seed[None], boxes)[0] > 0.3).all()
    with pytest.raises(ValueError):
        props.bag(plane)


def test_seed_boxes_and_selective_search_stay_inside_the_image():
    b = seed_boxes([10, 10, 20, 30], (15, 20), width=40, height=32)
    assert len(b) == 10 * 5 and (b >= 0).all() and (b[:, [0, 2]] <= 40).all() and (b[:, [1, 3]] <= 32).all()
    assert seed_boxes(None, (1, 1), width=4, height=4).shape == (0, 4)
    rgb, _ = scene()
    big = np.repeat(np.repeat(rgb, 5, axis=0), 5, axis=1)  # 300x400: searched at 200 px, boxes scaled back
    boxes = selective_search(big, max_side=200)
    assert len(boxes) and boxes[:, 2].max() > 200 and (boxes[:, 2] <= 400).all()
    assert np.array_equal(boxes, selective_search(big, max_side=200))  # deterministic


def test_config_checks():
    with pytest.raises(WsisError, match="--top"):
        ProposalConfig(top=0)
    with pytest.raises(WsisError, match="--max-side"):
        ProposalConfig(max_side=8)
