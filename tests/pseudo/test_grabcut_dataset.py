"""GrabCut over a dataset (wsis_cli.pseudo.grabcut_dataset) on one hand-made picture, in process."""

import cv2
import numpy as np
import pytest

from wsis_cli.coco import parse_dataset, rle_to_mask
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


@pytest.fixture
def crowd(tmp_path):
    """One 160x120 picture with discs that touch and overlap, boxed once, twice (duplicates of
    equal size across the cut between pieces) and partly outside; 12 boxes."""
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal([70, 120, 70], 10, size=(120, 160, 3)), 0, 255).astype(np.uint8)
    centres = [(30, 30), (50, 35), (90, 40), (110, 60), (130, 90), (40, 90), (70, 80)]
    for k, (x, y) in enumerate(centres):
        cv2.circle(img, (x, y), 16, (40 + 30 * k, 40, 220 - 20 * k), -1)
    cv2.imwrite(str(tmp_path / "c.png"), img)
    boxes = [[x - 17, y - 17, 34, 34] for x, y in centres] + [[14, 14, 34, 34], [30, 20, 60, 50],
                                                              [140, 100, 40, 40], [33, 18, 34, 34], [0, 0, 160, 120]]
    anns = [{"id": 100 - 7 * i, "image_id": 5, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)]
    ds = parse_dataset({"images": [{"id": 5, "file_name": "c.png", "width": 160, "height": 120}], "annotations": anns,
                        "categories": [{"id": 1, "name": "thing"}]}, path="crowd.json")
    return ds, tmp_path


@pytest.mark.parametrize("overlap", ["smaller", "evidence"])  # evidence: the parent reads the picture to join
def test_an_image_cut_in_pieces_gives_the_same_bytes(crowd, overlap):
    import json

    from wsis_cli.pseudo.grabcut_dataset import SplitRule

    ds, images = crowd
    cfg = GrabCutConfig(iters=3, overlap=overlap)
    whole = json.dumps(pseudolabel_grabcut(ds, images_dir=images, cfg=cfg, workers=1).to_json())
    tiny = SplitRule(boxes=2, pixels=0, chunk=1)
    jobs, _ = prepare_boxes(ds, ds.images, images, cfg, lambda m: None)
    parts = tiny(jobs[0], 2)
    assert [len(p.boxes) for p in parts.pieces] == [3, 3, 2, 1, 1, 1, 1]  # ceil(left / 4), in the image's order
    assert [i for p in parts.pieces for i in p.ann_ids] == jobs[0].ann_ids
    cut = json.dumps(pseudolabel_grabcut(ds, images_dir=images, cfg=cfg, workers=2, split=tiny).to_json())
    assert cut == whole
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from wsis_cli.pseudo.grabcut_dataset import grabcut_image

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:  # every piece in another process
        done = list(ex.map(parts.fn, parts.pieces))
    assert json.dumps(parts.join(done)) == json.dumps(grabcut_image(jobs[0]))
    out = json.loads(whole)["annotations"]
    masks = np.stack([rle_to_mask(a["segmentation"]) for a in out])
    assert masks.sum(0).max() == 1  # overlaps resolved across the pieces
    dup = {a["id"]: a for a in out}
    assert dup[93]["area"] > 0 and dup[30]["area"] == 0  # the same box in pieces 1 and 6: the larger id keeps it
    assert dup[30]["wsis"]["method"] == "none" and not dup[30]["wsis"]["valid"]


def test_the_split_rule():
    from wsis_cli.pseudo.grabcut_dataset import SPLIT, BoxJob, SplitRule

    job = BoxJob(1, "x.jpg", 3000, 4000, list(range(200)), [[0, 0, 10, 10]] * 200, {})
    parts = SPLIT(job, 2)
    sizes = [len(p.boxes) for p in parts.pieces]
    assert sum(sizes) == 200 and sizes[0] == 16 and sizes == sorted(sizes, reverse=True) and min(sizes[:-1]) >= 2
    assert sizes[9:] == [14, 11, 8, 6, 5, 3, 3, 2, 2, 2]  # ceil(left / 4) once that is under 16, at least 2
    assert [p.ann_ids for p in parts.pieces] == [job.ann_ids[a:a + k] for a, k in zip(np.cumsum([0] + sizes), sizes)]
    assert [len(p.boxes) for p in SplitRule(most=1000)(job, 2).pieces][:3] == [50, 38, 28]  # ceil(left / 4) alone
    assert SPLIT(job, 1) is None  # one worker: nothing to share
    small = BoxJob(1, "x.jpg", 480, 640, list(range(200)), [[0, 0, 10, 10]] * 200, {})
    few = BoxJob(1, "x.jpg", 3000, 4000, list(range(20)), [[0, 0, 10, 10]] * 20, {})
    assert SPLIT(small, 2) is None and SPLIT(few, 2) is None  # small pictures and few boxes stay whole


def test_a_broken_picture_in_a_piece_is_one_line(crowd):
    from wsis_cli.errors import WsisError
    from wsis_cli.pseudo.grabcut_dataset import SplitRule

    ds, images = crowd
    data = (images / "c.png").read_bytes()
    (images / "c.png").write_bytes(data[:200])  # the header reads, the pixels do not decode
    with pytest.raises(WsisError) as e:
        pseudolabel_grabcut(ds, images_dir=images, cfg=GrabCutConfig(iters=1), workers=2,
                            split=SplitRule(boxes=2, pixels=0, chunk=1))
    assert "\n" not in str(e.value) and str(e.value).endswith("c.png: not an image OpenCV can decode")


def test_masks_are_encoded_from_their_crops_as_from_the_full_mask():
    from wsis_cli.coco import mask_to_rle
    from wsis_cli.pseudo.grabcut_dataset import crop_to_rle

    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mh, mw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        r0, c0 = int(rng.integers(0, h - mh + 1)), int(rng.integers(0, w - mw + 1))
        crop = rng.random((mh, mw)) < rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])
        full = np.zeros((h, w), bool)
        full[r0:r0 + mh, c0:c0 + mw] = crop
        assert crop_to_rle(crop, (r0, c0), h, w) == mask_to_rle(full)
    assert crop_to_rle(None, (0, 0), 4, 5) == mask_to_rle(np.zeros((4, 5), bool))
