"""GrabCut over a dataset (wsis_cli.pseudo.grabcut_dataset) on one hand-made picture, in process."""

import cv2
import numpy as np
import pytest

from wsis_cli.coco import parse_dataset
from wsis_cli.jobs import fingerprint
from wsis_cli.pseudo.grabcut import GrabCutConfig
from wsis_cli.pseudo.grabcut_dataset import grabcut_job, prepare_boxes, pseudolabel_grabcut, summary_line
from wsis_cli.pseudo.labels import PseudoLabels


@pytest.fixture
def disc(tmp_path):
    """Two 64x48 pictures with a red disc; boxes: the disc, one partly outside, one wholly outside."""
    img = np.full((48, 64, 3), (60, 120, 60), np.uint8)
    cv2.circle(img, (32, 24), 12, (40, 40, 220), -1)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), img)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 12, 24, 24], "note": "kept"},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 30, 30, 30], "area": 900},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [100, 100, 5, 5]},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [20, 12, 24, 24]}]
    ds = parse_dataset({"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                                   {"id": 2, "file_name": "b.png", "width": 64, "height": 48}],
                        "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}, path="boxes.json")
    return ds, tmp_path


def test_masks_for_the_boxes_as_pseudo_labels(disc):
    ds, images = disc
    warnings = []
    pl = pseudolabel_grabcut(ds, images_dir=images, cfg=GrabCutConfig(), warn=warnings.append)
    assert isinstance(pl, PseudoLabels) and pl.ids.tolist() == [1, 2, 4]  # 3 has no area in the image: skipped
    assert any("annotation 3 (image 1)" in w and "skipped" in w for w in warnings)
    np.testing.assert_allclose(pl.boxes[1], [50, 30, 64, 48])  # clipped
    assert pl.methods[0] == "grabcut" and pl.valid[0]
    yy, xx = np.mgrid[0:48, 0:64]
    truth = (xx - 32) ** 2 + (yy - 24) ** 2 <= 12 ** 2
    m = pl.mask(0)
    assert (m & truth).sum() / (m | truth).sum() > 0.85 and pl.areas[0] == m.sum()
    rec = pl.record(0)
    assert list(rec) == ["id", "image_id", "category_id", "bbox", "note", "iscrowd", "segmentation", "area", "wsis"]
    assert set(rec["wsis"]) == {"method", "valid", "box_iou"} and rec["bbox"] == [20.0, 12.0, 24.0, 24.0]
    assert pl.record(1)["bbox"] == [50.0, 30.0, 14.0, 18.0] and list(pl.record(1))[-3:] == ["segmentation", "area",
                                                                                              "wsis"]
    assert pl.summary == {"masks": 3, "skipped": 1, "empty": 0,
                          "by_size": {"small": {"boxes": 3, "invalid": int((~pl.valid).sum())},
                                      "large": {"boxes": 0, "invalid": 0}},
                          "methods": {m: pl.methods.count(m) for m in set(pl.methods)}}
    prov = pl.provenance
    assert prov["verb"] == "pseudolabel grabcut" and prov["seed"] == 0 and prov["summary"] == pl.summary
    assert list(prov["options"])[:3] == ["boxes", "images", "shard"] and prov["options"]["boxes"] == "boxes.json"


def test_a_shard_and_the_job(disc):
    ds, images = disc
    cfg = GrabCutConfig(iters=2)
    part = pseudolabel_grabcut(ds, images_dir=images, cfg=cfg, shard="2/2")
    assert [im["id"] for im in part.images] == [2] and part.ids.tolist() == [4]
    job = grabcut_job(ds, images_dir=images, cfg=cfg, shard="2/2")
    assert job.verb == "pseudolabel grabcut" and job.total == 1 and "boxes" not in job.options
    assert job.payload == [[ds.images[1]], [ds.annotations[3]]]
    assert job.run(None).to_json() == part.to_json()
    other = grabcut_job(ds, images_dir=images, cfg=GrabCutConfig(iters=3), shard="2/2")
    assert fingerprint(job.verb, job.options, job.payload) != fingerprint(other.verb, other.options, other.payload)


def test_prepare_boxes_needs_boxes(disc):
    from wsis_cli.errors import InputError

    ds, images = disc
    del ds.annotations[0]["bbox"]
    with pytest.raises(InputError, match="annotation 1 \\(image 1\\): has no bbox; grabcut needs box labels"):
        prepare_boxes(ds, ds.images, images, GrabCutConfig(), lambda m: None)


def test_summary_line():
    s = {"masks": 5, "skipped": 1, "empty": 2, "by_size": {"small": {"boxes": 4, "invalid": 1},
                                                           "large": {"boxes": 0, "invalid": 0}},
         "methods": {"grabcut": 3, "ellipse": 1, "none": 1}}
    assert summary_line(s) == ("5 masks; small boxes (< 64x64 px): 1/4 invalid (25%); methods: ellipse 1, grabcut 3, "
                               "none 1; 1 boxes skipped (no area); 2 masks empty")
