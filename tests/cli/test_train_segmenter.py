import json

import pytest
import torch

from conftest import write
from wsis_cli.cli.app import app
from wsis_cli.engine.train_segmenter import load_segmenter
from wsis_cli.synth import synthesize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write(root / "gt.json", synthesize(root, n=3, size=48, seed=0, n_classes=2))
    return root


def train(runner, root, *args, labels="gt.json"):
    return runner.invoke(app, ["train", "segmenter", str(root / labels), "--images", str(root / "images"),
                               "--backbone", "resnet18", "--weights", "none", "--size", "32", "--batch-size", "2",
                               "--threads", "1", *map(str, args)])


def test_tiny_run_writes_a_checkpoint_and_resumes(runner, synth, tmp_path):
    out = tmp_path / "seg.pt"
    r = train(runner, synth, "--epochs", 1, "--out", out, "--device", "cpu", "--seed", 4)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert "epoch 1/1: loss " in r.stderr and "mIoU" in r.stderr and f"wrote {out}: 1 epochs" in r.stderr
    ck = torch.load(out, map_location="cpu", weights_only=True)
    assert ck["format"] == "wsis-segmenter" and ck["epoch"] == 1 and ck["train"]["seed"] == 4
    assert ck["config"] == {"backbone": "resnet18", "num_classes": 2, "category_ids": [1, 2],
                            "category_names": ["disc", "box"], "size": 32}
    model, config = load_segmenter(out)
    assert not model.training and model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)

    r = train(runner, synth, "--epochs", 1, "--out", out, "--seed", 4)
    assert r.exit_code == 1 and r.stderr.strip() == (f"wsis: error: {out}: exists; add --resume to continue its "
                                                     "training, or --overwrite to start afresh")
    r = train(runner, synth, "--epochs", 2, "--out", out, "--seed", 4, "--resume", "--quiet")
    assert r.exit_code == 0 and r.stderr == "" and torch.load(out, weights_only=True)["epoch"] == 2
    r = train(runner, synth, "--epochs", 2, "--out", out, "--seed", 4, "--resume", "--no-flip")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "--flip" in r.stderr
    ds = json.loads((synth / "gt.json").read_text())  # image 1 with image-level labels only: left out, with a note
    ds["annotations"] = [a if a["image_id"] != 1 else {"id": a["id"], "image_id": 1, "category_id": a["category_id"],
                                                       "count": None} for a in ds["annotations"]]
    write(synth / "mixed.json", ds)
    r = train(runner, synth, "--epochs", 1, "--out", out, "--seed", 5, "--overwrite", labels="mixed.json")
    assert r.exit_code == 0 and torch.load(out, weights_only=True)["train"]["seed"] == 5
    assert "1 of 3 images have only image-level labels (no mask, no box) and teach nothing pixel-wise: left out" \
        in " ".join(r.stderr.split())
    assert "on 2 images, 2 classes + background" in " ".join(r.stderr.split())


def test_bad_input_is_one_line(runner, synth, tmp_path):
    out = tmp_path / "seg.pt"
    ds = json.loads((synth / "gt.json").read_text())
    il = {**ds, "annotations": [{"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                                 "count": None} for a in ds["annotations"]]}
    write(synth / "il.json", il)
    r = train(runner, synth, "--out", out, labels="il.json")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "il.json: no image to train on" in r.stderr
    moved = {**ds, "images": [{**ds["images"][0], "file_name": "gone.png"}, *ds["images"][1:]]}
    write(synth / "moved.json", moved)
    r = train(runner, synth, "--out", out, labels="moved.json")
    assert r.exit_code == 1 and r.stderr.strip().endswith("gone.png: image file not found (image 1 of "
                                                          f"{synth / 'moved.json'})")
    r = train(runner, synth, "--out", out, "--weights", tmp_path / "missing.pth")
    assert r.exit_code == 1 and "missing.pth: no such file" in r.stderr
    assert not out.exists()
    for args in (["--backbone", "vgg16"], ["--lr", "0"], ["--size", "16"], ["--epochs", "0"], ["--device", "tpu"]):
        r = train(runner, synth, "--out", out, *args)
        assert r.exit_code == 2, (args, r.output)
    assert train(runner, synth, "--out", tmp_path).exit_code == 2


def test_help(runner):
    r = runner.invoke(app, ["train", "--help"])
    assert r.exit_code == 0 and "segmenter" in r.stdout
    r = runner.invoke(app, ["train", "segmenter", "--help"], env={"COLUMNS": "200"})
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0 and "pyramid pooling" in text
    for opt in ("--backbone", "--weights", "--size", "--epochs", "--batch-size", "--lr", "--seed", "--threads",
                "--device", "--amp", "--resume", "--overwrite", "--quiet"):
        assert opt in text
