"""The one pseudo-label type and its writer (wsis_cli.pseudo.labels), on hand-made rows."""

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import rect_mask
from wsis_cli.coco import mask_to_rle, parse_dataset, rle_to_mask
from wsis_cli.pseudo.labels import LAYOUT, Instance, PseudoLabels, coco_bbox, to_record

H, W = 16, 20
IMAGES = [{"id": 1, "file_name": "a.png", "height": H, "width": W},
          {"id": 2, "file_name": "b.png", "height": H, "width": W}]
SOURCE = parse_dataset({"info": {"description": "weak"}, "images": IMAGES, "annotations": [],
                        "categories": [{"id": 1, "name": "thing"}]}, path="weak.json")
MASK = rect_mask(H, W, 2, 3, 7, 9)


def row(**kw):
    base = dict(id=1, image_id=1, category_id=1, box=[2, 3, 7, 9], mask=mask_to_rle(MASK), area=30.0, method="net")
    return Instance(**{**base, **kw})


def labels(rows, **kw):
    return PseudoLabels.from_instances(rows, source=SOURCE, images=IMAGES, **kw)


@pytest.mark.parametrize("rows", [[], [row()]], ids=["empty", "one"])
def test_columns_and_shapes(rows):
    pl = labels(rows)
    n = len(rows)
    assert len(pl) == n and pl.boxes.shape == (n, 4) and pl.boxes.dtype == np.float64
    assert pl.ids.shape == pl.image_ids.shape == pl.category_ids.shape == pl.scores.shape == (n,)
    assert pl.ids.dtype == np.int64 and pl.valid.dtype == bool
    assert np.isnan(pl.scores).all() and np.isnan(pl.ious).all()  # none given
    obj = pl.to_json()
    assert len(obj["annotations"]) == n and obj["images"] == IMAGES and obj["categories"] == SOURCE.categories


def test_empty_arrays_are_zero_by_four():
    pl = PseudoLabels(source=SOURCE, images=IMAGES, ids=np.zeros(0), image_ids=[], category_ids=[],
                      boxes=np.zeros((0, 4)), masks=[], areas=[], scores=[], ious=[], methods=[], valid=[],
                      wsis=[], fields=[])
    assert pl.boxes.shape == (0, 4) and pl.records() == []
    assert pl.to_dataset().annotations == [] and pl.to_dataset().info == {"description": "weak", "wsis": {}}


def test_new_record_in_layout_order_with_rounding():
    r = row(box=[2.123456789, 3, 7.5, 9], score=0.123456789, iou=0.5, wsis={"source": "ilc"}, fields={"iscrowd": 0})
    rec = to_record(r)
    assert list(rec) == ["id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd", "score", "iou",
                         "wsis"]
    assert rec["bbox"] == [2.123457, 3.0, 5.376543, 6.0] and rec["score"] == 0.123457 and rec["area"] == 30.0
    assert rec["wsis"] == {"method": "net", "source": "ilc"}
    np.testing.assert_array_equal(rle_to_mask(rec["segmentation"]), MASK)
    assert "iou" not in to_record(row(iou=None)) and "score" not in to_record(row())


def test_layout_places_extras():
    layout = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "score", "point", "wsis")
    rec = to_record(row(score=0.5, method="prm", fields={"point": [3.0, 4.0], "iscrowd": 0, "note": "n"}),
                    bbox_decimals=None, layout=layout)
    assert list(rec) == ["id", "note", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "score",
                         "point", "wsis"]  # fields the layout does not place come right after the id


def test_a_records_own_fields_stay_in_place():
    own = {"area": 5, "iscrowd": 0, "image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 1, "id": 9,
           "wsis": {"peak": 0.5, "method": "prm"}, "score": 1}
    rec = to_record(row(id=9, method="ccgr", wsis={"box_before": [0.0, 0.0, 1.0, 1.0]}, fields=own),
                    bbox_decimals=2, layout=("bbox", "segmentation", "area", "wsis"))
    assert list(rec) == ["area", "iscrowd", "image_id", "bbox", "category_id", "id", "wsis", "score", "segmentation"]
    assert rec["bbox"] == [2.0, 3.0, 5.0, 6.0] and rec["area"] == 30.0 and rec["score"] == 1  # carried as it was
    assert rec["wsis"] == {"peak": 0.5, "method": "ccgr", "box_before": [0.0, 0.0, 1.0, 1.0]}
    assert list(rec["wsis"]) == ["peak", "method", "box_before"]


def test_kept_records_are_written_as_they_are():
    own = {"image_id": 1, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 1,
           "wsis": {"method": "net", "source": "full"}}
    rec = to_record(Instance(id=3, image_id=1, category_id=1, area=8.0, fields=own))
    assert list(rec) == ["id", *own, "area"] and rec["id"] == 3 and rec["area"] == 8.0
    assert to_record(Instance(id=3, image_id=1, category_id=1, fields={**own, "id": 7, "area": 2})) == \
        {**own, "id": 7, "area": 2}
    assert "area" not in to_record(Instance(id=3, image_id=1, category_id=1, fields=own))


def test_rows_round_trip_and_provenance():
    rows = [row(score=0.25, valid=False, method="ellipse", wsis={"valid": False, "box_iou": 0.1}),
            Instance(id=2, image_id=2, category_id=1, fields={"image_id": 2, "category_id": 1, "iscrowd": 1})]
    pl = labels(rows, summary={"n": 2}, provenance={"verb": "v"}, bbox_decimals=4)
    assert replace(pl[0], box=None) == Instance(id=1, image_id=1, category_id=1, mask=rows[0].mask, area=30.0,
                                                score=0.25, method="ellipse", valid=False,
                                                wsis={"valid": False, "box_iou": 0.1})
    np.testing.assert_array_equal(pl[0].box, [2, 3, 7, 9])
    assert pl[1].box is None and pl[1].area is None and pl.mask(1) is None
    np.testing.assert_array_equal(pl.mask(0), MASK)
    assert pl.methods == ["ellipse", "kept"] and pl.valid.tolist() == [False, True]
    obj = json.loads(json.dumps(pl.to_json()))
    assert obj["info"] == {"description": "weak", "wsis": {"verb": "v"}}
    again = parse_dataset(obj)  # a valid COCO dataset
    assert [a["id"] for a in again.annotations] == [1, 2]


@pytest.mark.parametrize("bad, message", [
    (dict(method="magic"), "method must be one of"),
    (dict(box=[5, 0, 1, 4]), "box must be finite"),
    (dict(box=None), "box must be finite"),
    (dict(box=[0, 0, np.inf, 1]), "box must be finite"),
    (dict(mask=None), "has no mask"),
    (dict(mask=mask_to_rle(np.zeros((4, 4), bool))), "compressed RLE of its image's size"),
    (dict(image_id=3), "its image is not among the images"),
    (dict(area=-1.0), "area must be"),
    (dict(area=None), "area must be"),
    (dict(score=np.inf), "score must be finite"),
])
def test_validation_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        labels([row(**bad)])


def test_validation_of_lengths_and_ids():
    with pytest.raises(ValueError, match="annotation ids repeat"):
        labels([row(), row()])
    with pytest.raises(ValueError, match="boxes has 0 rows, expected 1"):
        PseudoLabels(source=SOURCE, images=IMAGES, ids=[1], image_ids=[1], category_ids=[1], boxes=np.zeros((0, 4)),
                     masks=[None], areas=[1.0], scores=[np.nan], ious=[np.nan], methods=["kept"], valid=[True],
                     wsis=[{}], fields=[{}])
    with pytest.raises(ValueError, match="scores has 2 rows"):
        PseudoLabels(source=SOURCE, images=IMAGES, ids=[1], image_ids=[1], category_ids=[1], boxes=np.zeros((1, 4)),
                     masks=[None], areas=[1.0], scores=[1, 2], ious=[np.nan], methods=["kept"], valid=[True],
                     wsis=[{}], fields=[{}])


@pytest.mark.parametrize("box, decimals, want", [([1, 2, 4, 8], None, [1.0, 2.0, 3.0, 6.0]),
                                                  ([0.123456, 0, 1.0, 0.5], 2, [0.12, 0.0, 0.88, 0.5])])
def test_coco_bbox(box, decimals, want):
    assert coco_bbox(box, decimals) == want


def test_default_layout_is_the_coco_order():
    assert LAYOUT[:3] == ("id", "image_id", "category_id") and LAYOUT[-1] == "wsis"
