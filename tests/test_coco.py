import copy
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import rect_mask
from wsis_cli.coco import (Dataset, fill_areas, load_dataset, mask_to_rle, parse_dataset, parse_results,
                           read_json, rle_to_mask, segm_to_rle, supervision_level, write_json)
from wsis_cli.errors import InputError, WsisError


@settings(max_examples=50, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_rle_roundtrip(mask):
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str)
    assert rle["size"] == list(mask.shape)
    np.testing.assert_array_equal(rle_to_mask(rle), mask)


def test_polygon_and_uncompressed_rle_decode_to_the_same_mask():
    m = rect_mask(10, 12, 2, 3, 8, 7)  # columns 2..7, rows 3..6
    poly = [[2, 3, 8, 3, 8, 7, 2, 7]]
    # pycocotools rasterises a polygon along pixel edges: the rectangle (2,3)-(8,7) is exactly
    # columns 2..7 and rows 3..6
    np.testing.assert_array_equal(rle_to_mask(segm_to_rle(poly, 10, 12)), m)
    flat = m.flatten(order="F").astype(int)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    np.testing.assert_array_equal(rle_to_mask({"size": [10, 12], "counts": counts}), m)
    np.testing.assert_array_equal(rle_to_mask(segm_to_rle({"size": [10, 12], "counts": counts}, 10, 12)), m)


def test_supervision_levels():
    assert supervision_level({"segmentation": [[0, 0, 1, 0, 1, 1]], "bbox": [0, 0, 1, 1]}) == "full"
    assert supervision_level({"segmentation": [], "bbox": [0, 0, 1, 1]}) == "box"
    assert supervision_level({"category_id": 1}) == "ilc"
    assert supervision_level({"category_id": 1, "count": 3}) == "ilc"
    assert supervision_level({"category_id": 1, "count": None}) == "il"


def test_dataset_levels_and_subset(two_images):
    ds = parse_dataset(two_images)
    assert ds.levels() == {"full": 3, "box": 0, "ilc": 0, "il": 0}
    sub = ds.subset([2])
    assert [im["id"] for im in sub.images] == [2]
    assert [a["id"] for a in sub.annotations] == [3]
    assert sub.anns_by_image == {2: [sub.annotations[0]]}


def _break(ds, where, key, value):
    bad = copy.deepcopy(ds)
    bad[where][0][key] = value
    return bad


@pytest.mark.parametrize("where,key,value,record,problem", [
    ("images", "width", 0, "image 1", "'width' must be a positive integer"),
    ("images", "id", "a", "image a", "'id' must be an integer"),
    ("images", "file_name", "", "image 1", "'file_name'"),
    ("annotations", "image_id", 99, "annotation 1 (image 99)", "names no image"),
    ("annotations", "category_id", 7, "annotation 1 (image 1)", "'category_id' 7 names no category"),
    ("annotations", "bbox", [0, 0, -1, 3], "annotation 1 (image 1)", "negative width"),
    ("annotations", "bbox", [0, 0, 3], "annotation 1 (image 1)", "4 finite numbers"),
    ("annotations", "segmentation", [[1, 2, 3, 4]], "annotation 1 (image 1)", "at least 6"),
    ("annotations", "segmentation", {"size": [5, 5], "counts": "abc"}, "annotation 1 (image 1)", "does not match"),
    ("annotations", "segmentation", {"size": [40, 40], "counts": [3, 4]}, "annotation 1 (image 1)", "sum to 7"),
    ("annotations", "segmentation", {"size": [40, 40], "counts": "0"}, "annotation 1 (image 1)", "sum to 0"),
    ("annotations", "segmentation", {"size": [40, 40], "counts": "a"}, "annotation 1 (image 1)", "not a valid RLE"),
    ("annotations", "image_id", [1], "annotation 1 (image [1])", "'image_id' must be an integer"),
    ("annotations", "category_id", [1], "annotation 1 (image 1)", "'category_id' [1] names no category"),
    ("annotations", "area", -4, "annotation 1 (image 1)", "'area' must be a finite number >= 0"),
    ("annotations", "iscrowd", 1.0, "annotation 1 (image 1)", "'iscrowd' must be 0 or 1"),
    ("images", "id", 2**64, f"image {2**64}", "int64"),
    ("annotations", "iscrowd", 2, "annotation 1 (image 1)", "'iscrowd' must be 0 or 1"),
    ("annotations", "count", 0, "annotation 1 (image 1)", "'count'"),
    ("annotations", "area", "big", "annotation 1 (image 1)", "'area' must be a finite number"),
])
def test_validation_names_file_record_and_problem(two_images, where, key, value, record, problem):
    with pytest.raises(InputError) as e:
        parse_dataset(_break(two_images, where, key, value), path="gt.json")
    msg = str(e.value)
    assert msg.startswith(f"gt.json: {record}: "), msg
    assert problem in msg
    assert "\n" not in msg


def test_duplicates_and_shape_faults(two_images):
    dup = copy.deepcopy(two_images)
    dup["annotations"][1]["id"] = 1
    with pytest.raises(InputError, match="annotation 1 .*duplicate annotation id"):
        parse_dataset(dup, path="x.json")
    with pytest.raises(InputError, match="results list"):
        parse_dataset([], path="x.json")
    with pytest.raises(InputError, match="'images' must be a list"):
        parse_dataset({"annotations": []}, path="x.json")


def test_read_json_faults(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON: .* line 1 column"):
        read_json(bad)


def test_load_dataset_and_fill_areas(tmp_path, two_images):
    for a in two_images["annotations"]:
        del a["area"]
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(two_images))
    ds = load_dataset(p)
    fill_areas(ds)
    assert [a["area"] for a in ds.annotations] == [100.0, 72.0, 400.0]
    assert all(a["iscrowd"] == 0 for a in ds.annotations)


def test_results_validation():
    ok = [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 2, 2]}]
    assert parse_results(ok) == ok
    with pytest.raises(InputError, match=r"preds.json: result 0 \(image 1\): 'score'"):
        parse_results([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}], path="preds.json")
    with pytest.raises(InputError, match="needs a 'segmentation' or a 'bbox'"):
        parse_results([{"image_id": 1, "category_id": 1, "score": 1.0}], path="preds.json")
    with pytest.raises(InputError, match="JSON list"):
        parse_results({"images": []}, path="preds.json")


def test_write_json_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    def broken_replace(src, dst):  # the disk fills up, the process dies... just before the rename
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("wsis_cli.coco.os.replace", broken_replace)
    with pytest.raises(WsisError, match=r"out.json: cannot write: No space left on device"):
        write_json(target, {"a": 2, "big": list(range(1000))})
    assert json.loads(target.read_text()) == {"a": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # and no temp file is left
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"a": float("nan")})
    assert not (tmp_path / "nan.json").exists()


def test_write_json_to_a_pipe_writes_in_place(tmp_path):
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_json(fifo, {"a": 1})
    reader.join(5)
    assert json.loads(got[0]) == {"a": 1}
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a pipe, not replaced by a file


def test_write_json_stdout_and_numpy(capsys):
    write_json("-", {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(2)})
    assert json.loads(capsys.readouterr().out) == {"n": 3, "x": 0.5, "a": [0, 1]}


def test_dataset_rle_reports_bad_compressed_counts(two_images):
    ds = Dataset(**{k: two_images[k] for k in ("images", "annotations", "categories")}, path="gt.json")
    ds.annotations[0] = {**ds.annotations[0], "segmentation": None}
    with pytest.raises(InputError, match="annotation 1 .*has no segmentation"):
        ds.rle(ds.annotations[0])


def test_outputs_honour_the_umask_and_a_rewrite_keeps_the_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "new.json", {"a": 1})
        assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o644  # as open() would make it
        (tmp_path / "kept.json").write_text("{}")
        os.chmod(tmp_path / "kept.json", 0o640)
        write_json(tmp_path / "kept.json", {"a": 2})
        assert stat.S_IMODE(os.stat(tmp_path / "kept.json").st_mode) == 0o640
        os.umask(0o077)
        write_json(tmp_path / "private.json", {"a": 3})
        assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600
    finally:
        os.umask(old)
