"""`wsis pseudolabel bags`: exit codes, the bag fields, bad input as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write
from wsis_cli.cli.app import app
from wsis_cli.images import write_image
from wsis_cli.pseudo.scoremaps import write_score_maps

H, W = 48, 64


def bag_scene(root):
    """One image with a red square (class 1, a peak with its point and region box), a blue square
    (class 2, a box without a point) and a crowd region; its score maps."""
    rgb = np.full((H, W, 3), 110, dtype=np.uint8)
    rgb[10:30, 8:28] = (210, 40, 40)
    rgb[14:34, 36:56] = (40, 40, 210)
    (root / "images").mkdir(parents=True, exist_ok=True)
    write_image(root / "images" / "a.png", rgb)
    planes = np.zeros((2, H, W), dtype=np.float32)
    planes[0, 10:30, 8:28] = 1.0
    planes[1, 14:34, 36:56] = 1.0
    write_score_maps(root / "maps" / "a.npz", planes, [1, 2])
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [12.0, 14.0, 8.0, 8.0], "iscrowd": 0,
             "point": [16.0, 18.0], "score": 0.9, "wsis": {"method": "prm"}},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [36.0, 14.0, 20.0, 20.0], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0.0, 40.0, 8.0, 8.0], "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": [H * W]}, "area": 0.0}]
    ds = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}], "annotations": anns,
          "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]}
    return write(root / "seeds.json", ds)


def run(runner, *args):
    return runner.invoke(app, ["pseudolabel", "bags", *map(str, args)])


def one_line_error(r):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsis: error: "), r.stderr
    return lines[0]


def test_bags_are_written_best_first(runner, tmp_path):
    seeds = bag_scene(tmp_path)
    out = tmp_path / "bags.json"
    r = run(runner, seeds, "--images", tmp_path / "images", "--maps", tmp_path / "maps", "--out", out, "--top", "4")
    assert r.exit_code == 0, r.output
    assert "2 bags on 1 images" in r.stderr
    ds = json.loads(out.read_text())
    assert ds["info"]["wsis"]["verb"] == "pseudolabel bags" and ds["info"]["wsis"]["options"]["top"] == 4
    a1, a2, crowd = ds["annotations"]
    assert a1["point"] == [16.0, 18.0] and a1["score"] == 0.9 and a1["wsis"]["method"] == "prm"  # kept whole
    for a in (a1, a2):
        bag, rank = a["wsis"]["bag"], a["wsis"]["bag_rank"]
        assert 1 <= len(bag) == len(rank) <= 4 and rank == sorted(rank, reverse=True)
        assert all(len(b) == 4 and b[2] > 0 and b[3] > 0 for b in bag)
    for x, y, w, h in a1["wsis"]["bag"]:  # the peak is in every proposal
        assert x <= 16 <= x + w and y <= 18 <= y + h
    x, y, w, h = a1["wsis"]["bag"][0]
    assert abs(x - 8) <= 2 and abs(y - 10) <= 2 and abs(w - 20) <= 3 and abs(h - 20) <= 3  # the red square
    assert [36.0, 14.0, 20.0, 20.0] in a2["wsis"]["bag"]  # a box seed keeps itself
    assert crowd == json.loads(seeds.read_text())["annotations"][2]
    again = tmp_path / "again.json"
    run(runner, seeds, "--images", tmp_path / "images", "--maps", tmp_path / "maps", "--out", again, "--top", "4")
    assert again.read_text() == out.read_text()  # deterministic


def test_bad_input_is_one_line(runner, tmp_path):
    seeds = bag_scene(tmp_path)
    obj = json.loads(seeds.read_text())
    args = ["--images", tmp_path / "images", "--maps", tmp_path / "maps", "--out", tmp_path / "o.json"]
    obj["annotations"][0]["point"] = [500.0, 1.0]
    msg = one_line_error(run(runner, write(tmp_path / "p.json", obj), *args))
    assert "p.json" in msg and "annotation 1" in msg and "'point'" in msg
    (tmp_path / "maps" / "a.npz").unlink()
    msg = one_line_error(run(runner, seeds, *args))
    assert "a.npz" in msg and "no score map file" in msg
    assert run(runner, seeds, "--images", tmp_path / "images", "--maps", tmp_path / "maps", "--top", "0").exit_code == 2
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("drop", ["bbox"])
def test_a_seed_needs_a_box_or_a_point(runner, tmp_path, drop):
    seeds = bag_scene(tmp_path)
    obj = json.loads(seeds.read_text())
    del obj["annotations"][1][drop]
    msg = one_line_error(run(runner, write(tmp_path / "s.json", obj), "--images", tmp_path / "images", "--maps",
                             tmp_path / "maps"))
    assert "annotation 2" in msg and "neither a bbox nor a point" in msg
