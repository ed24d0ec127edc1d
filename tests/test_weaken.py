
import pytest
from conftest import ann, rect_mask

from wsis_cli.coco import parse_dataset, supervision_level
from wsis_cli.weaken import weaken


@pytest.fixture
def with_crowd(two_images):
    two_images["annotations"].append(ann(4, 2, rect_mask(40, 40, 0, 30, 40, 40), 2, iscrowd=1))
    two_images["annotations"].append(ann(5, 1, rect_mask(40, 40, 0, 30, 10, 40), 1))
    return two_images


def test_box(with_crowd):
    out = weaken(parse_dataset(with_crowd), "box")
    assert [a["id"] for a in out.annotations] == [1, 2, 3, 4, 5]
    assert all(supervision_level(a) == "box" for a in out.annotations)
    assert out.annotations[0]["bbox"] == [2.0, 2.0, 10.0, 10.0] and out.annotations[0]["area"] == 100.0
    assert out.annotations[3]["iscrowd"] == 1


def test_box_from_mask_when_bbox_missing(two_images):
    del two_images["annotations"][0]["bbox"]
    assert weaken(parse_dataset(two_images), "box").annotations[0]["bbox"] == [2.0, 2.0, 10.0, 10.0]


def test_ilc_keeps_one_label_per_instance_and_drops_crowds(with_crowd):
    out = weaken(parse_dataset(with_crowd), "ilc")
    assert [(a["id"], a["image_id"], a["category_id"]) for a in out.annotations] == \
        [(1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 2, 2), (5, 1, 1)]
    levels = [supervision_level(a) for a in out.annotations]
    assert levels == ["ilc", "ilc", "ilc", "il", "ilc"]  # class 2 in image 2 is only a crowd: present, count unknown
    assert set(out.annotations[0]) == {"id", "image_id", "category_id"}


def test_il_one_label_per_present_class(with_crowd):
    out = weaken(parse_dataset(with_crowd), "il")
    assert [(a["id"], a["image_id"], a["category_id"], a["count"]) for a in out.annotations] == \
        [(1, 1, 1, None), (2, 1, 2, None), (3, 2, 1, None), (4, 2, 2, None)]


def test_weakening_never_invents_counts(two_images):
    two_images["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 1, "count": None},  # il: count unknown
        {"id": 2, "image_id": 1, "category_id": 2, "count": 3},     # compact ilc: three instances
    ]
    out = weaken(parse_dataset(two_images), "ilc")
    assert [a.get("count", "absent") for a in out.annotations] == [None, 3]
    assert [supervision_level(a) for a in out.annotations] == ["il", "ilc"]
    out = weaken(parse_dataset(two_images), "il")
    assert [a["count"] for a in out.annotations] == [None, None]
