"""`wsis pseudolabel mil`: one box per bag from a trained model; fields kept; bad input as one line."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import rect_mask, write
from wsis_cli.cli.app import app
from wsis_cli.coco import mask_to_rle
from tests.engine.test_train_mil import make_bags

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy MIL model trained for one epoch through the CLI on 2 images (its picks need not be
    good: the verb's contract is tested here, the picking in tests/engine/test_train_mil.py)."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("mil")
    obj = make_bags(root, n=2)
    a = obj["annotations"][0]
    a["segmentation"], a["point"] = mask_to_rle(rect_mask(64, 64, 0, 0, 5, 5)), [2.0, 2.0]
    obj["annotations"].append({"id": 9, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 4.0, 4.0],
                               "iscrowd": 1, "segmentation": mask_to_rle(rect_mask(64, 64, 0, 0, 4, 4)),
                               "area": 16.0})
    obj["annotations"].append({"id": 10, "image_id": 2, "category_id": 1, "bbox": [1.0, 1.0, 4.0, 4.0],
                               "iscrowd": 0, "wsis": {"bag": []}})
    bags = write(root / "bags.json", obj)
    before = torch.get_num_threads()
    r = CliRunner().invoke(app, ["train", "mil", str(bags), "--images", str(root / "images"), "--out",
                                 str(root / "mil.pt"), "--backbone", "resnet18", "--weights", "none", "--size",
                                 "32", "--epochs", "1", "--threads", "1", "--device", "cpu"])
    torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return {"root": root, "bags": bags, "images": root / "images", "model": root / "mil.pt"}


def run(runner, *args):
    return runner.invoke(app, ["pseudolabel", "mil", *map(str, args)])


def one_line_error(r):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsis: error: "), r.stderr
    return lines[0]


def test_one_box_per_bag_fields_kept(runner, trained, tmp_path):
    out = tmp_path / "boxes.json"
    r = run(runner, trained["bags"], "--images", trained["images"], "--model", trained["model"], "--out", out,
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "2 boxes chosen by MIL; mean IoU with the seed box" in r.stderr and "2 annotations unchanged" in r.stderr
    src = json.loads(trained["bags"].read_text())["annotations"]
    ds = json.loads(out.read_text())
    assert ds["info"]["wsis"]["verb"] == "pseudolabel mil"
    got = ds["annotations"]
    assert [a["id"] for a in got] == [a["id"] for a in src]
    for a, s in zip(got[:2], src[:2]):
        assert a["bbox"] in s["wsis"]["bag"]
        assert a["wsis"]["method"] == "mil" and a["wsis"]["box_before"] == s["bbox"]
        assert 0 < a["wsis"]["mil_score"] <= 1 and a["wsis"]["bag"] == s["wsis"]["bag"]
    assert got[0]["segmentation"] == src[0]["segmentation"] and got[0]["point"] == [2.0, 2.0]
    assert got[2] == src[2] and got[3] == src[3]  # a crowd region, an empty bag: as they were
    r = run(runner, trained["bags"], "--images", trained["images"], "--model", trained["model"], "--device", "cpu",
            "--quiet")
    assert r.exit_code == 0 and json.loads(r.stdout)["annotations"] == got and r.stderr == ""


def test_bad_input(runner, trained, tmp_path):
    args = ["--images", trained["images"], "--out", tmp_path / "o.json", "--device", "cpu"]
    not_mil = tmp_path / "x.pt"
    torch.save({"format": "wsis-classifier"}, not_mil)
    msg = one_line_error(run(runner, trained["bags"], "--model", not_mil, *args))
    assert "x.pt: not a wsis-mil checkpoint" in msg
    obj = json.loads(trained["bags"].read_text())
    obj["categories"].append({"id": 7, "name": "new"})
    obj["annotations"][1]["category_id"] = 7
    msg = one_line_error(run(runner, write(tmp_path / "c.json", obj), "--model", trained["model"], *args))
    assert "c.json" in msg and "annotation 2" in msg and "category 7 is not one of the model's" in msg
    obj = json.loads(trained["bags"].read_text())
    del obj["annotations"][0]["wsis"]
    msg = one_line_error(run(runner, write(tmp_path / "n.json", obj), "--model", trained["model"], *args))
    assert "has no 'wsis.bag'" in msg
    assert run(runner, trained["bags"], "--model", tmp_path / "missing.pt", *args).exit_code == 2
    assert not (tmp_path / "o.json").exists()
