"""The segmenter's class-level labels (every rule on hand-made annotations) and its keyed augmentation."""

from __future__ import annotations

import numpy as np
import torch

from conftest import ann, make_dataset, rect_mask
from wsis_cli.coco import parse_dataset
from wsis_cli.engine.loop import FailedSample
from wsis_cli.engine.rng import keyed_rng
from wsis_cli.engine.segmenter_data import (IGNORE, SCALE_RANGE, SegmentationImages, augment_pair, band_width,
                                            label_map, resize_pair, training_images, with_image_labels)
from wsis_cli.images import write_image

I = IGNORE


def _one(anns, h=60, w=60, n_cats=2):
    ds = parse_dataset(make_dataset([(1, h, w)], anns, n_cats=n_cats))
    return label_map(ds, ds.images[0])


def test_a_mask_paints_its_class_and_the_rest_is_background():
    lab = _one([ann(1, 1, rect_mask(60, 60, 10, 10, 30, 30), 2)])  # the dataset's 2nd category -> 2
    assert lab.dtype == np.uint8 and lab.shape == (60, 60)
    assert lab[20, 20] == 2 and lab[12, 12] == 2
    assert lab[50, 50] == 0 and lab[0, 0] == 0
    assert set(np.unique(lab)) == {0, 2, I}


def test_category_order_is_the_datasets_not_the_ids():
    d = make_dataset([(1, 30, 30)], [ann(1, 1, rect_mask(30, 30, 5, 5, 25, 25), 9)])
    d["categories"] = [{"id": 9, "name": "b"}, {"id": 3, "name": "a"}]
    ds = parse_dataset(d)
    assert label_map(ds, ds.images[0])[15, 15] == 1


def test_two_classes_over_a_pixel_are_ignored_one_class_twice_is_not():
    lab = _one([ann(1, 1, rect_mask(60, 60, 0, 0, 30, 30), 1), ann(2, 1, rect_mask(60, 60, 15, 15, 45, 45), 2)])
    assert lab[22, 22] == I  # both classes
    assert lab[5, 5] == 1 and lab[40, 40] == 2
    lab = _one([ann(1, 1, rect_mask(60, 60, 0, 0, 30, 30), 1), ann(2, 1, rect_mask(60, 60, 15, 15, 45, 45), 1)])
    assert lab[22, 22] == 1 and lab[5, 5] == 1 and lab[40, 40] == 1


def test_box_pixels_outside_every_mask_are_ignored():
    a = ann(1, 1, rect_mask(60, 60, 20, 20, 30, 30), 1)
    a["bbox"] = [10.0, 10.0, 30.0, 30.0]  # a partial pseudo mask in a larger box
    other = ann(2, 1, rect_mask(60, 60, 12, 32, 20, 38), 2)  # inside that box: keeps its class
    lab = _one([a, other])
    assert lab[12, 12] == I and lab[38, 38] == I and lab[25, 30] == I
    assert lab[25, 25] == 1 and lab[35, 15] == 2
    assert lab[8, 8] == 0 and lab[45, 45] == 0  # outside the box


def test_a_band_along_each_border_scaled_by_the_mask_is_ignored():
    assert band_width(0) == band_width(63) == 0 and band_width(64) == band_width(400) == 1 and band_width(10000) == 5
    small = _one([ann(1, 1, rect_mask(60, 60, 10, 10, 15, 15), 1)])  # 25 px: no band, its label whole
    assert (small[10:15, 10:15] == 1).all() and small[9, 12] == 0
    lab = _one([ann(1, 1, rect_mask(60, 60, 10, 10, 30, 30), 1)])  # area 400: 1 px each side
    assert lab[9, 20] == I and lab[10, 20] == I  # just outside and just inside the top edge
    assert lab[8, 20] == 0 and lab[11, 20] == 1
    lab = _one([ann(1, 1, rect_mask(160, 160, 30, 30, 130, 130), 1)], h=160, w=160)  # area 10000: 5 px
    assert (lab[80, 25:35] == I).all()  # x 25..34 lie within 5 px of the left edge (x = 29.5)
    assert lab[80, 24] == 0 and lab[80, 35] == 1
    # the image's edge is not a mask border
    lab = _one([ann(1, 1, rect_mask(60, 60, 0, 0, 20, 20), 1)])
    assert lab[0, 0] == 1 and lab[0, 10] == 1 and lab[19, 10] == I and lab[20, 10] == I


def test_crowd_regions_and_box_only_annotations_are_ignored_over_their_box():
    crowd = ann(1, 1, rect_mask(60, 60, 30, 30, 40, 40), 1, iscrowd=1)
    box = {"id": 2, "image_id": 1, "category_id": 2, "bbox": [2.5, 2.5, 10.0, 5.0], "iscrowd": 0}
    lab = _one([crowd, box])
    assert (lab[30:40, 30:40] == I).all() and lab[29, 35] == 0 and lab[35, 41] == 0  # the crowd paints nothing
    assert (lab[2:8, 2:13] == I).all()  # fractional box: every pixel it touches
    assert lab[8, 5] == 0 and lab[5, 13] == 0 and lab[1, 5] == 0
    assert (lab[45:, :] == 0).all()


def test_a_labelled_class_without_a_place_makes_the_background_unknown():
    mask = ann(1, 1, rect_mask(60, 60, 10, 10, 30, 30), 1)
    il = {"id": 2, "image_id": 1, "category_id": 2, "count": None}
    lab = _one([mask, il])
    assert lab[20, 20] == 1 and lab[50, 50] == I and lab[0, 0] == I
    # a label of a class that has a mask there adds nothing
    lab = _one([mask, {**il, "category_id": 1}])
    assert lab[20, 20] == 1 and lab[50, 50] == 0


def test_label_only_images_are_left_out_and_unannotated_ones_are_negatives():
    d = make_dataset([(1, 20, 20), (2, 20, 20), (3, 20, 20), (4, 20, 20)], [
        {"id": 1, "image_id": 1, "category_id": 1, "count": None},
        {"id": 2, "image_id": 1, "category_id": 2},  # IL+C
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4]},
        ann(4, 3, rect_mask(20, 20, 5, 5, 15, 15), 2)])
    ds = parse_dataset(d)
    assert training_images(ds) == ([1, 2, 3], 1)
    assert (label_map(ds, ds.images[3]) == 0).all()  # no annotations: all background


def test_image_level_labels_say_what_the_pseudo_labels_missed():
    """Pseudo-labels of 3 images (two instances of class 1 found in image 1, one in image 2, none
    in image 3) joined to IL+C labels counting two in each."""
    m = rect_mask(60, 60, 10, 10, 20, 20)
    pseudo = parse_dataset(make_dataset([(1, 60, 60), (2, 60, 60), (3, 60, 60)],
                                        [ann(1, 1, m, 1), ann(2, 1, rect_mask(60, 60, 40, 40, 50, 50), 1),
                                         ann(3, 2, m, 1)]), path="prm.json")
    ilc = parse_dataset(make_dataset([(1, 60, 60), (2, 60, 60), (3, 60, 60), (4, 60, 60)],
                                     [{"id": k, "image_id": i, "category_id": 1}
                                      for k, i in enumerate((1, 1, 2, 2, 3, 3, 4, 4), 1)]), path="ilc.json")
    assert (label_map(pseudo, pseudo.images[2]) == 0).all()  # alone, image 3 would be a negative
    joined = with_image_labels(pseudo, ilc)
    assert len(joined.annotations) == 3 + 6 and len({a["id"] for a in joined.annotations}) == 9  # image 4 not added
    full, short, none = (label_map(joined, im) for im in joined.images)
    assert full[55, 55] == 0 and full[15, 15] == 1  # count met: the background is known
    assert short[55, 55] == I and short[15, 15] == 1  # one instance missed: somewhere off the mask
    assert (none == I).all()
    assert training_images(joined) == ([0, 1], 1)  # image 3 has labels only: left out, not a negative
    il = parse_dataset(make_dataset([(1, 60, 60), (2, 60, 60), (3, 60, 60)],
                                    [{"id": 1, "image_id": 2, "category_id": 1, "count": None}]), path="il.json")
    assert label_map(with_image_labels(pseudo, il), pseudo.images[1])[55, 55] == 0  # no count: one is enough


def test_resize_keeps_label_values():
    lab = np.zeros((30, 50), np.uint8)
    lab[5:20, 10:40] = 3
    lab[0, :] = I
    rgb = np.zeros((30, 50, 3), np.uint8)
    r, l = resize_pair(rgb, lab, 37)
    assert r.shape == (37, 37, 3) and l.shape == (37, 37) and set(np.unique(l)) == {0, 3, I}


def _pair(size=48):
    rgb = np.zeros((size, size, 3), np.uint8)
    lab = np.zeros((size, size), np.uint8)
    rgb[8:30, 4:20, 0] = 255
    lab[8:30, 4:20] = 1
    return rgb, lab


def test_augmentation_is_keyed_and_keeps_image_and_labels_aligned():
    rgb, lab = _pair()
    views = []
    for epoch in range(8):
        r, l = augment_pair(rgb, lab, 40, keyed_rng(0, epoch, 3, 0))
        r2, l2 = augment_pair(rgb, lab, 40, keyed_rng(0, epoch, 3, 0))
        assert np.array_equal(r, r2) and np.array_equal(l, l2)  # the same key, the same view
        assert r.shape == (40, 40, 3) and l.shape == (40, 40) and set(np.unique(l)) <= {0, 1, I}
        red = r[:, :, 0].astype(int)
        assert red[l == 1].mean() > 200 and red[l == 0].mean() < 60
        views.append(l)
    assert len({v.tobytes() for v in views}) == 8
    # flips happen, and scale jitter both crops (no IGNORE) and pads (IGNORE around)
    assert any((v == I).any() for v in views) and any(not (v == I).any() for v in views)
    plain = augment_pair(rgb, lab, 40, keyed_rng(0, 0, 3, 0), flip=False, scale_jitter=False)
    assert np.array_equal(plain[1], resize_pair(rgb, lab, 40)[1])
    assert SCALE_RANGE == (0.75, 1.25)


def test_items_are_keyed_by_index_and_epoch(tmp_path):
    d = make_dataset([(1, 40, 40), (2, 40, 40)], [ann(1, 1, rect_mask(40, 40, 5, 5, 25, 25), 1),
                                                   ann(2, 2, rect_mask(40, 40, 10, 10, 30, 30), 2)])
    ds = parse_dataset(d)
    rng = np.random.default_rng(0)
    for im in ds.images:
        write_image(tmp_path / im["file_name"], rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    paths = [tmp_path / im["file_name"] for im in ds.images]
    data = SegmentationImages(ds, paths, size=32, seed=4)
    x, y = data[(1, 0)]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (32, 32) and y.dtype == torch.long and set(y.unique().tolist()) <= {0, 2, I}
    assert torch.equal(data[(1, 0)][1], y) and torch.equal(data[(1, 0)][0], x)
    assert any(not torch.equal(data[(1, e)][0], x) for e in range(1, 4))
    (tmp_path / "000002.png").unlink()
    bad = data[(1, 0)]
    assert isinstance(bad, FailedSample) and "image file not found" in bad.message and "image 2 of" in bad.message
