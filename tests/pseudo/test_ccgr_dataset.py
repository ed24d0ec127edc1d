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
    assert rec["wsis"]["method"] == "ccgr" and rec["wsis"]["peak"] == 0.5
    assert rec["wsis"]["box_before"] == [12.0, 12.0, 8.0, 8.0]
    x, y, w, h = rec["wsis"]["ccgr_box"]
    np.testing.assert_allclose([x, y, x + w, y + h], [8, 8, 24, 24], atol=1.0)
    assert rec["bbox"] == [8.0, 8.0, 16.0, 16.0]  # the mask's own box
    assert pl.record(1) == CROWD  # passed through as it was
    assert pl.summary["boxes"] == 1 and pl.summary["with_point"] == 1
    assert pl.summary["kept_box"] == pl.summary["fallback"] == pl.summary["dropped"] == 0
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
    s = {"boxes": 4, "with_point": 3, "kept_box": 2, "fallback": 1, "dropped": 1, "mean_box_iou_moved": 0.5}
    assert summary_line(s) == ("4 boxes refined (3 with a point); mean IoU of each box with its start 0.50; 2 "
                               "implausible moves undone (input box kept); 1 empty masks replaced by the incoming "
                               "mask; 1 dropped (empty masks)")
    none = {**s, "mean_box_iou_moved": None, "kept_box": 0, "fallback": 0, "dropped": 0}
    assert summary_line(none) == "4 boxes refined (3 with a point)"


@pytest.fixture
def three_images(tmp_path):
    """Three images, two classes (three planes in the second image's file, two used), two boxes each."""
    images, anns = [], []
    for i, name in enumerate(("a", "b", "c"), start=1):
        images.append({"id": i, "file_name": f"{name}.png", "height": H, "width": W})
        squares = [rect_mask(H, W, 4 + i, 4, 14 + i, 16), rect_mask(H, W, 18, 10 + i, 30, 22 + i)]
        for k, (m, cid) in enumerate(zip(squares, (1, 2))):
            ys, xs = np.nonzero(m)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            anns.append({"id": 10 * i + k, "image_id": i, "category_id": cid,
                         "point": [float(xs.mean()), float(ys.mean())],
                         "bbox": [x1 + (x2 - x1) / 4, y1 + (y2 - y1) / 4, (x2 - x1) / 2, (y2 - y1) / 2]})
        planes = [m.astype(np.float32) for m in squares] + ([np.zeros((H, W), np.float32)] if i == 2 else [])
        write_score_maps(tmp_path / f"{name}.npz", np.stack(planes), [1, 2, 3][:len(planes)])
    ds = parse_dataset({"images": images, "annotations": anns,
                        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}, path="boxes.json")
    return ds, tmp_path


@pytest.mark.parametrize("chunk_pixels", [1, H * W * 2, H * W * 3])
def test_chunks_read_ahead_give_the_same_labels(three_images, chunk_pixels):
    # one image a chunk (the next read while one is refined), two, or all three together
    ds, maps = three_images
    cfg = CCGRConfig(steps=30)
    whole = pseudolabel_ccgr(ds, maps_dir=maps, cfg=cfg)
    seen = []
    got = pseudolabel_ccgr(ds, maps_dir=maps, cfg=CCGRConfig(steps=30, chunk_pixels=chunk_pixels),
                           progress=lambda d, t: seen.append((d, t)))
    np.testing.assert_array_equal(got.boxes, whole.boxes)
    assert got.masks == whole.masks and got.ids.tolist() == [10, 11, 20, 21, 30, 31]
    assert seen[-1] == (6, 6) and len(seen) == {1: 3, H * W * 2: 3, H * W * 3: 2}[chunk_pixels]


def test_a_fault_in_a_later_chunk_names_its_file(three_images):
    ds, maps = three_images
    (maps / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"c\.npz.*image 3 \(c\.png\).*not a readable \.npz file"):
        pseudolabel_ccgr(ds, maps_dir=maps, cfg=CCGRConfig(steps=5, chunk_pixels=1))
    (maps / "c.npz").unlink()
    write_score_maps(maps / "c.npz", np.zeros((1, H, W), np.float32), [1])
    with pytest.raises(InputError, match=r"c\.npz.*has no plane for category 2, needed by annotation 31"):
        pseudolabel_ccgr(ds, maps_dir=maps, cfg=CCGRConfig(steps=5, chunk_pixels=1))
