"""CCGR over a dataset (wsis_cli.pseudo.ccgr_dataset): hand-made score maps, in process."""

import numpy as np
import pytest

from tests.conftest import rect_mask
from wsis_cli.coco import parse_dataset
from wsis_cli.errors import InputError
from wsis_cli.pseudo.ccgr import CCGRConfig
from wsis_cli.pseudo.ccgr_dataset import pseudolabel_ccgr, summary_line
from wsis_cli.pseudo.scoremaps import write_score_maps

H = W = 32
CROWD = {"area": 16.0, "id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0.0, 0.0, 4.0, 4.0]}


@pytest.fixture
def square(tmp_path):
    """A class-1 square at 8..24 and its map; a box half its size with its point, a crowd region."""
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [12.0, 12.0, 8.0, 8.0], "point": [16.0, 16.0],
             "wsis": {"method": "prm", "peak": 0.5}},
            dict(CROWD)]
    ds = parse_dataset({"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}], "annotations": anns,
                        "categories": [{"id": 1, "name": "thing"}]}, path="boxes.json")
    write_score_maps(tmp_path / "a.npz", rect_mask(H, W, 8, 8, 24, 24).astype(np.float32)[None], [1])
    return ds, tmp_path


def test_boxes_grow_onto_the_square(square):
    ds, maps = square
    seen = []
    pl = pseudolabel_ccgr(ds, maps_dir=maps, cfg=CCGRConfig(steps=100), seed=3,
                          progress=lambda d, t: seen.append((d, t)))
    assert pl.ids.tolist() == [1, 3] and pl.methods == ["ccgr", "kept"] and seen == [(1, 1)]
    np.testing.assert_allclose(pl.boxes[0], [8, 8, 24, 24], atol=1.0)
    assert pl.mask(0)[8:24, 8:24].mean() > 0.9 and pl.areas[0] == pl.mask(0).sum()
    rec = pl.record(0)
    assert list(rec) == ["id", "image_id", "category_id", "bbox", "point", "wsis", "iscrowd", "segmentation", "area"]
    assert rec["wsis"] == {"method": "ccgr", "peak": 0.5, "box_before": [12.0, 12.0, 8.0, 8.0]}
    assert pl.record(1) == CROWD  # passed through as it was
    assert pl.summary["boxes"] == 1 and pl.summary["with_point"] == 1 and pl.summary["empty_masks"] == 0
    assert pl.provenance["seed"] == 3 and pl.provenance["options"]["maps"] == str(maps)
    assert pl.provenance["options"]["boxes"] == "boxes.json" and pl.provenance["summary"] == pl.summary


def test_same_seed_same_output_and_missing_maps(square, tmp_path):
    ds, maps = square
    cfg = CCGRConfig(steps=20)
    assert (pseudolabel_ccgr(ds, maps_dir=maps, cfg=cfg).to_json()
            == pseudolabel_ccgr(ds, maps_dir=maps, cfg=cfg).to_json())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no score map file for this image"):
        pseudolabel_ccgr(ds, maps_dir=tmp_path / "empty", cfg=cfg)


def test_summary_line():
    s = {"boxes": 4, "with_point": 3, "empty_masks": 1, "mean_box_iou_moved": 0.5}
    assert summary_line(s) == ("4 boxes refined (3 with a point); mean IoU of each box with its start 0.50; 1 masks "
                               "empty (no score above --mask-thr in the box)")
    assert summary_line({**s, "mean_box_iou_moved": None, "empty_masks": 0}) == "4 boxes refined (3 with a point)"
