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
    assert data.skipped == {"crowd": 1, "invalid": 0, "degenerate_box": 1, "image_level_images": 1}
    valid = training_set(ds, tmp_path, only_valid=True)
    assert [[a["id"] for a in anns] for anns in valid.anns] == [[1, 2], []] and valid.skipped["invalid"] == 1
    boxes = _ds([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}])
    with pytest.raises(WsisError, match="no annotation has a mask; give --boxes-only"):
        training_set(boxes, tmp_path)
    assert len(training_set(boxes, tmp_path, boxes_only=True).images) == 3
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
