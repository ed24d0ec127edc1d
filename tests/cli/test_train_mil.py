"""`wsis train mil`: exit codes, the checkpoint, --resume/--overwrite, bad input as one line."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write
from wsis_cli.cli.app import app
from tests.engine.test_train_mil import make_bags

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--backbone", "resnet18", "--weights", "none", "--size", "32", "--epochs", "1", "--batch-size", "2",
        "--threads", "1", "--device", "cpu"]


def run(runner, *args):
    return runner.invoke(app, ["train", "mil", *map(str, args)])


def one_line_error(r):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsis: error: "), r.stderr
    return lines[0]


def test_train_mil_writes_a_checkpoint_and_resumes(runner, tmp_path):
    bags = write(tmp_path / "bags.json", make_bags(tmp_path, n=2))
    out = tmp_path / "mil.pt"
    r = run(runner, bags, "--images", tmp_path / "images", "--out", out, *TINY)
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and "wrote" in r.stderr and "2 bags" in r.stderr
    ck = torch.load(out, weights_only=True)
    assert ck["format"] == "wsis-mil" and ck["epoch"] == 1 and ck["config"]["size"] == 32
    msg = one_line_error(run(runner, bags, "--images", tmp_path / "images", "--out", out, *TINY))
    assert "exists; add --resume" in msg
    r = run(runner, bags, "--images", tmp_path / "images", "--out", out, *TINY[:-6], "--epochs", "2",
            "--batch-size", "2", "--threads", "1", "--device", "cpu", "--resume")
    assert r.exit_code == 0, r.output
    assert torch.load(out, weights_only=True)["epoch"] == 2
    assert run(runner, bags, "--images", tmp_path / "images", "--out", out, *TINY, "--overwrite",
               "--quiet").exit_code == 0
    assert torch.load(out, weights_only=True)["epoch"] == 1


def test_bad_input(runner, tmp_path):
    obj = make_bags(tmp_path, n=2)
    out = tmp_path / "mil.pt"
    for a in obj["annotations"]:
        del a["wsis"]
    msg = one_line_error(run(runner, write(tmp_path / "seeds.json", obj), "--images", tmp_path / "images", "--out",
                             out, *TINY))
    assert "seeds.json" in msg and "has no 'wsis.bag'" in msg
    msg = one_line_error(run(runner, write(tmp_path / "b.json", make_bags(tmp_path, n=2)), "--images",
                             tmp_path / "images", "--out", out, *TINY[:2], "--weights", tmp_path / "nope.pth"))
    assert "nope.pth: no such file" in msg
    assert run(runner, tmp_path / "b.json", "--images", tmp_path / "images", "--out", out,
               "--backbone", "vgg16").exit_code == 2
    assert run(runner, tmp_path / "b.json", "--images", tmp_path / "images", "--out", out, "--lr", "0").exit_code == 2
    one = make_bags(tmp_path, n=2)
    one["categories"] = one["categories"][:1]
    for a in one["annotations"]:
        a["category_id"] = one["categories"][0]["id"]
    msg = one_line_error(run(runner, write(tmp_path / "one.json", one), "--images", tmp_path / "images", "--out",
                             out, *TINY))
    assert "one.json: has 1 categories" in msg and "needs at least 2" in msg
    assert not out.exists()
    json.loads((tmp_path / "b.json").read_text())
