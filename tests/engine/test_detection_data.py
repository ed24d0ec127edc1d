"""What a detector trains on: the data rules and each rank's batches."""

from __future__ import annotations

import numpy as np
import pytest

from wsis_cli.coco import Dataset, parse_dataset
from wsis_cli.engine.detection_data import epoch_batches, training_set
from wsis_cli.errors import InputError, WsisError
from wsis_cli.images import write_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _ds(anns: list[dict], n_images: int = 3) -> Dataset:
    images = [{"id": i, "file_name": f"{i}.png", "height": 32, "width": 32} for i in range(1, n_images + 1)]
    for k, a in enumerate(anns, start=1):
        a.setdefault("id", k)
    return parse_dataset({"images": images, "annotations": anns,
                          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, path="t.json")


def _square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def test_training_set_rules(tmp_path):
    for i in range(1, 4):
        write_image(tmp_path / f"{i}.png", np.zeros((32, 32, 3), np.uint8))
    ds = _ds([
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "segmentation": _square(2, 2, 10)},
        {"image_id": 1, "category_id": 2, "bbox": [15, 15, 10, 10]},                      # box only
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 30, 30], "iscrowd": 1, "segmentation": _square(0, 0, 30)},
        {"image_id": 2, "category_id": 1, "bbox": [2, 2, 10, 10], "wsis": {"valid": False}},
        {"image_id": 2, "category_id": 1, "bbox": [5, 5, 0.5, 8]},                        # degenerate
        {"image_id": 3, "category_id": 1},                                                # IL+C: image left out
    ])
    data = training_set(ds, tmp_path)
    assert [im["id"] for im in data.images] == [1, 2]
    assert [[a["id"] for a in anns] for anns in data.anns] == [[1, 2], [4]]
    assert data.skipped == {"crowd": 1, "invalid": 0, "valid": 0, "degenerate_box": 1, "image_level_images": 1,
                            "empty_mask": 0}
    assert data.ignore == [[], []]
    assert data.notes == [("left out 1 crowd annotations", False), ("left out 1 degenerate box annotations", False),
                          ("left out 1 image level images", False)]
    valid = training_set(ds, tmp_path, only_valid=True)
    assert [[a["id"] for a in anns] for anns in valid.anns] == [[1, 2], []] and valid.skipped["invalid"] == 1
    assert [[a["id"] for a in ig] for ig in valid.ignore] == [[], [4]]  # an ignore region, not background
    assert ("--only-valid: 1 annotations with wsis.valid false are ignore regions (no loss near them, not "
            "background)", False) in valid.notes
    assert valid.fingerprint() != data.fingerprint()
    boxes = _ds([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}])
    with pytest.raises(WsisError, match="no annotation has a mask; give --boxes-only to train a detector, --box-loss "
                                        "boxinst to train masks from the boxes"):
        training_set(boxes, tmp_path)
    assert len(training_set(boxes, tmp_path, boxes_only=True).images) == 3
    assert len(training_set(boxes, tmp_path, box_loss="boxinst").images) == 3  # masks from boxes
    with pytest.raises(WsisError, match="no image to train on"):
        training_set(_ds([{"image_id": i, "category_id": 1} for i in (1, 2, 3)]), tmp_path)


def test_epoch_batches_split_every_image_between_ranks():
    one = epoch_batches(7, 2, seed=3, epoch=1)
    assert sorted(i for b in one for i in b) == list(range(7)) and [len(b) for b in one] == [2, 2, 2, 1]
    assert one == epoch_batches(7, 2, seed=3, epoch=1) and one != epoch_batches(7, 2, seed=3, epoch=2)
    ranks = [epoch_batches(7, 2, seed=3, epoch=1, rank=r, world=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 8 slots (7 padded), 4 each, equal step counts
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == 8 and set(seen) == set(range(7))


# ----------------------------------------------------------------------------- training runs


def test_every_image_is_checked_before_training(tmp_path):
    for i in range(1, 4):
        write_image(tmp_path / f"{i}.png", np.zeros((32, 32, 3), np.uint8))
    ds = _ds([{"image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10], "segmentation": _square(2, 2, 10)}
              for i in (1, 2, 3)])
    write_image(tmp_path / "3.png", np.zeros((32, 40, 3), np.uint8))
    with pytest.raises(InputError, match=r"3.png: is 40x32 px but image 3 of t.json says 32x32$"):
        training_set(ds, tmp_path)
    (tmp_path / "2.png").write_bytes(b"\x89PNG junk")
    with pytest.raises(InputError, match=r"2.png: not an image file, its header cannot be read \(image 2 of t.json\)"):
        training_set(ds, tmp_path)


# ----------------------------------------------------------------------------- ignore regions, empty masks
def _images(tmp_path, n=3):
    for i in range(1, n + 1):
        write_image(tmp_path / f"{i}.png", np.zeros((32, 32, 3), np.uint8))


def _grabcut_like():
    return _ds([
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "wsis": {"valid": True}},
        {"image_id": 1, "category_id": 2, "bbox": [15, 15, 10, 10], "wsis": {"valid": False}},
        {"image_id": 2, "category_id": 1, "bbox": [4, 4, 8, 8]},                           # no flag: a human box
        {"image_id": 3, "category_id": 2, "bbox": [1, 1, 20, 20], "wsis": {"valid": True}},  # every instance valid
    ])


def test_only_invalid_trains_the_invalid_and_ignores_the_valid(tmp_path):
    _images(tmp_path)
    data = training_set(_grabcut_like(), tmp_path, only_invalid=True, boxes_only=True)
    assert [[a["id"] for a in anns] for anns in data.anns] == [[2], [3], []]
    assert [[a["id"] for a in ig] for ig in data.ignore] == [[1], [], [4]]
    assert data.skipped["valid"] == 2 and data.skipped["invalid"] == 0
    assert len(data.images) == 3  # image 3's instances are all ignored: its background still trains
    assert ("--only-invalid: kept 1 annotations without wsis.valid (not GrabCut pseudo-labels)", False) in data.notes
    valid = training_set(_grabcut_like(), tmp_path, only_valid=True, boxes_only=True)
    assert [[a["id"] for a in anns] for anns in valid.anns] == [[1], [3], [4]]
    assert [[a["id"] for a in ig] for ig in valid.ignore] == [[2], [], []]
    with pytest.raises(WsisError, match=r"^--only-valid and --only-invalid exclude each other .*; give one$"):
        training_set(_grabcut_like(), tmp_path, only_valid=True, only_invalid=True, boxes_only=True)
    every = _ds([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "wsis": {"valid": True}}])
    with pytest.raises(WsisError, match=r"no annotation with a box or mask to train on \(every one is an ignore"):
        training_set(every, tmp_path, only_invalid=True, boxes_only=True)


def test_ignore_regions_reach_the_target_and_flip_with_the_image(tmp_path):
    from wsis_cli.engine.detection_data import DetectionImages

    _images(tmp_path)
    data = training_set(_grabcut_like(), tmp_path, only_invalid=True, boxes_only=True)
    items = DetectionImages(data, seed=0, flip=False, masks=False)
    _, t = items[(0, 0)]
    assert t["boxes"].tolist() == [[15.0, 15.0, 25.0, 25.0]] and t["labels"].tolist() == [2]
    assert t["ignore"].tolist() == [[2.0, 2.0, 12.0, 12.0]]
    _, t = items[(1, 0)]
    assert t["ignore"].shape == (0, 4)
    _, t = items[(2, 0)]
    assert t["boxes"].shape == (0, 4) and t["ignore"].tolist() == [[1.0, 1.0, 21.0, 21.0]]
    flipped = DetectionImages(data, seed=0, flip=True, masks=False)
    for epoch in range(8):  # some epoch flips image 1
        _, t = flipped[(0, epoch)]
        if t["boxes"][0, 0] != 15.0:
            assert t["boxes"].tolist() == [[7.0, 15.0, 17.0, 25.0]]
            assert t["ignore"].tolist() == [[20.0, 2.0, 30.0, 12.0]]
            break
    else:
        raise AssertionError("no epoch flipped image 1")


def test_an_empty_mask_trains_as_a_box_and_is_reported(tmp_path):
    from wsis_cli.coco import mask_to_rle
    from wsis_cli.engine.detection_data import DetectionImages

    _images(tmp_path)
    empty = mask_to_rle(np.zeros((32, 32), bool))
    ds = _ds([
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "segmentation": _square(2, 2, 10)},
        {"image_id": 1, "category_id": 2, "bbox": [15, 15, 10, 10], "segmentation": empty, "area": 100.0},
    ])
    data = training_set(ds, tmp_path)
    assert data.skipped["empty_mask"] == 1
    assert [("segmentation" in a) for a in data.anns[0]] == [True, False]  # a box-only copy
    assert "segmentation" in ds.annotations[1]  # the dataset itself is left alone
    assert data.notes[-1] == ("t.json: 1 annotations have an empty mask (0 pixels; the first: annotation 2 "
                              "(image 1)); they train as box-only annotations, not as empty masks", True)
    _, t = DetectionImages(data, seed=0, flip=False, masks=True)[(0, 0)]
    assert t["has_mask"].tolist() == [True, False]  # out of the mask loss, not an all-background target
    only_empty = _ds([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "segmentation": empty}])
    with pytest.raises(WsisError, match="no annotation has a mask that is not empty; give --boxes-only"):
        training_set(only_empty, tmp_path)
