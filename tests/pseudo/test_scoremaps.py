"""Score-map files: write, read back at the image's size, and every fault as an InputError naming the file."""

import numpy as np
import pytest

from wsis_cli.errors import InputError
from wsis_cli.pseudo.scoremaps import map_path, read_score_maps, write_score_maps

REC = "image 7 (a.png)"


def test_map_path_is_the_image_stem(tmp_path):
    assert map_path(tmp_path, {"file_name": "sub/dir/a.b.png"}) == tmp_path / "a.b.npz"
    assert map_path(str(tmp_path), {"file_name": "x.jpg"}) == tmp_path / "x.npz"


def test_round_trip_at_the_image_size(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.random((2, 12, 16)).astype(np.float32)
    path = tmp_path / "deep" / "a.npz"
    write_score_maps(path, scores, [3, 1])
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["a.npz"]  # no temp file left
    maps = read_score_maps(path, height=12, width=16, record=REC)
    assert list(maps) == [3, 1]
    np.testing.assert_array_equal(maps[3], scores[0])
    np.testing.assert_array_equal(maps[1], scores[1])
    assert maps[3].dtype == np.float32 and maps[3].flags.c_contiguous


@pytest.mark.parametrize("h,w", [(24, 32), (6, 8), (24, 8), (13, 29)])
def test_any_resolution_is_resized_to_the_image(tmp_path, h, w):
    yy, xx = np.mgrid[0:12, 0:16]
    plane = ((xx >= 4) & (xx < 12) & (yy >= 3) & (yy < 9)).astype(np.float32)  # a block in the middle
    write_score_maps(tmp_path / "a.npz", np.stack([plane, 1 - plane]), [1, 2])
    maps = read_score_maps(tmp_path / "a.npz", height=h, width=w, record=REC)
    for cid, want in ((1, 1.0), (2, 0.0)):
        m = maps[cid]
        assert m.shape == (h, w) and m.dtype == np.float32
        assert 0 <= m.min() and m.max() <= 1
        assert m[h // 2, w // 2] == pytest.approx(want, abs=0.05)  # the middle stays the block
        assert m[0, 0] == pytest.approx(1 - want, abs=0.05)       # the corner stays background


def test_write_clips_and_casts(tmp_path):
    write_score_maps(tmp_path / "a.npz", np.array([[[-0.5, 0.5], [1.5, 1.0]]]), np.array([4]))
    with np.load(tmp_path / "a.npz") as z:
        assert z["scores"].dtype == np.float32 and z["category_ids"].dtype == np.int64
        np.testing.assert_array_equal(z["scores"], [[[0.0, 0.5], [1.0, 1.0]]])
    with pytest.raises(ValueError, match="K = len"):
        write_score_maps(tmp_path / "b.npz", np.zeros((2, 4, 4)), [1])
    with pytest.raises(ValueError):
        write_score_maps(tmp_path / "b.npz", np.zeros((4, 4)), [1])
    assert not (tmp_path / "b.npz").exists()


def test_no_classes_is_an_empty_map(tmp_path):
    write_score_maps(tmp_path / "a.npz", np.zeros((0, 4, 4)), [])
    assert read_score_maps(tmp_path / "a.npz", height=4, width=4, record=REC) == {}


def raw(tmp_path, **arrays):
    path = tmp_path / "a.npz"
    np.savez(path, **arrays)
    return path


GOOD = np.full((1, 4, 4), 0.5, np.float32)
SHAPE = "'scores' must be (K, H, W) with H, W > 0 and 'category_ids' (K,)"


@pytest.mark.parametrize("make,problem", [
    (lambda t: t / "missing.npz", "no score map file for this image"),
    (lambda t: (t / "a.npz").write_text("not a zip") and t / "a.npz", "not a readable .npz file"),
    (lambda t: (t / "a.npz").write_bytes(b"") or t / "a.npz", "not a readable .npz file"),
    (lambda t: raw(t, scores=GOOD), "needs arrays 'scores' and 'category_ids', has ['scores']"),
    (lambda t: raw(t, maps=GOOD, ids=[1]), "needs arrays 'scores' and 'category_ids', has ['ids', 'maps']"),
    (lambda t: raw(t, scores=GOOD[0], category_ids=[1]), SHAPE),
    (lambda t: raw(t, scores=GOOD, category_ids=[1, 2]), SHAPE),
    (lambda t: raw(t, scores=GOOD, category_ids=[[1]]), SHAPE),
    (lambda t: raw(t, scores=np.zeros((1, 0, 4), np.float32), category_ids=[1]), SHAPE),
    (lambda t: raw(t, scores=GOOD, category_ids=[1.0]), "'category_ids' must be integers, got float64"),
    (lambda t: raw(t, scores=GOOD, category_ids=np.array(["1"])), "'category_ids' must be integers"),
    (lambda t: raw(t, scores=GOOD.astype(str), category_ids=[1]), "'scores' must be numbers"),
    (lambda t: raw(t, scores=GOOD + 1, category_ids=[1]), "'scores' must be finite and within 0..1"),
    (lambda t: raw(t, scores=-GOOD, category_ids=[1]), "'scores' must be finite and within 0..1"),
    (lambda t: raw(t, scores=np.where(np.eye(4) > 0, np.nan, GOOD), category_ids=[1]),
     "'scores' must be finite and within 0..1"),
    (lambda t: raw(t, scores=np.concatenate([GOOD, GOOD]), category_ids=[2, 2]),
     "'category_ids' repeats a category"),
    (lambda t: raw(t, scores=GOOD.astype(object), category_ids=[1]), "not a readable .npz file"),  # pickled
], ids=["missing", "text", "empty", "no-ids", "other-names", "2d", "k-mismatch", "2d-ids", "empty-plane",
        "float-ids", "str-ids", "str-scores", "above-1", "below-0", "nan", "repeated", "object"])
def test_faults_name_the_file_and_the_image(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(InputError) as e:
        read_score_maps(path, height=4, width=4, record=REC)
    assert e.value.path == str(path) and e.value.record == REC
    assert str(e.value).startswith(f"{path}: {REC}: ") and problem in e.value.problem
    assert "\n" not in str(e.value)


def test_integer_scores_are_numbers(tmp_path):
    path = raw(tmp_path, scores=np.ones((1, 4, 4), np.uint8), category_ids=np.array([5], np.int32))
    maps = read_score_maps(path, height=4, width=4, record=REC)
    assert list(maps) == [5] and maps[5].dtype == np.float32 and (maps[5] == 1).all()
