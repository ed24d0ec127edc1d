import json

import pytest
import torch

from conftest import write
from wsis_cli.cli.app import app
from wsis_cli.coco import parse_dataset
from wsis_cli.engine.train_classifier import load_classifier
from wsis_cli.synth import synthesize
from wsis_cli.weaken import weaken


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth_ilc(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    gt = synthesize(root, n=6, size=64, seed=0)
    write(root / "ilc.json", weaken(parse_dataset(gt), "ilc").to_json())
    return root


def train(runner, root, *args):
    return runner.invoke(app, ["train", "classifier", str(root / "ilc.json"), "--images", str(root / "images"),
                               "--backbone", "resnet18", "--weights", "none", "--size", "64", "--batch-size", "4",
                               *map(str, args)])


def test_tiny_run_writes_a_checkpoint(runner, synth_ilc, tmp_path):
    out = tmp_path / "cls.pt"
    r = train(runner, synth_ilc, "--epochs", 1, "--out", out, "--device", "cpu", "--amp", "--seed", 4)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # nothing on stdout
    assert "warning: --amp needs CUDA; training in float32 on cpu" in r.stderr
    assert "epoch 1/1: loss " in r.stderr and f"wrote {out}: 1 epochs" in r.stderr
    ck = torch.load(out, map_location="cpu", weights_only=True)
    assert ck["format"] == "wsis-classifier" and ck["epoch"] == 1
    assert ck["train"]["seed"] == 4 and ck["train"]["amp"] is True and ck["config"]["backbone"] == "resnet18"
    model, config = load_classifier(out)
    assert config["category_names"] == ["disc", "box", "triangle", "star"] and not model.training

    r = train(runner, synth_ilc, "--epochs", 2, "--out", out, "--amp", "--seed", 4, "--resume")
    assert r.exit_code == 0, r.output
    assert f"resuming {out} after epoch 1 of 1" in r.stderr and "epoch 2/2: loss " in r.stderr
    assert torch.load(out, weights_only=True)["epoch"] == 2
    r = train(runner, synth_ilc, "--epochs", 2, "--out", out, "--amp", "--seed", 4, "--resume")
    assert r.exit_code == 0 and "already holds 2 epochs (asked for 2): nothing to train" in r.stderr
    r = train(runner, synth_ilc, "--epochs", 3, "--out", out, "--seed", 4, "--resume")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.strip() == (f"wsis: error: {out}: was trained with --amp True, not False; --resume needs "
                                "the same options (or --overwrite instead, to start afresh)")


def test_same_seed_same_weights(runner, synth_ilc, tmp_path):
    for name in ("a.pt", "b.pt"):
        assert train(runner, synth_ilc, "--epochs", 1, "--out", tmp_path / name).exit_code == 0
    a, b = (torch.load(tmp_path / n, weights_only=True)["model"] for n in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")
def test_cuda_without_a_gpu_is_a_usage_error(runner, synth_ilc, tmp_path):
    r = train(runner, synth_ilc, "--out", tmp_path / "c.pt", "--device", "cuda")
    assert r.exit_code == 2 and "no CUDA device is available" in " ".join(r.output.replace("│", " ").split())
    assert not (tmp_path / "c.pt").exists()


def test_usage_and_input_errors(runner, synth_ilc, tmp_path):
    out = tmp_path / "c.pt"
    r = train(runner, synth_ilc, "--out", out, "--weights", tmp_path / "missing.pth")
    assert r.exit_code == 1
    assert r.stderr.strip() == (f"wsis: error: --weights {tmp_path / 'missing.pth'}: no such file (give imagenet "
                                "(torchvision, needs the download or the hub cache), none (random init) or a local "
                                ".pth file)")
    (tmp_path / "junk.pth").write_text("junk")
    r = train(runner, synth_ilc, "--out", out, "--weights", tmp_path / "junk.pth")
    assert r.exit_code == 1 and "junk.pth: not a readable torch state dict" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    ds = json.loads((synth_ilc / "ilc.json").read_text())
    ds["annotations"] = []
    empty = write(tmp_path / "empty.json", ds)
    r = runner.invoke(app, ["train", "classifier", str(empty), "--images", str(synth_ilc / "images"),
                            "--weights", "none", "--out", str(out)])
    assert r.exit_code == 1
    assert r.stderr.strip() == (f"wsis: error: {empty}: no image has a label; the classifier learns from "
                                "image-level labels (annotations of any kind)")
    ds = json.loads((synth_ilc / "ilc.json").read_text())
    ds["images"][2]["file_name"] = "gone.png"
    moved = write(tmp_path / "moved.json", ds)
    r = runner.invoke(app, ["train", "classifier", str(moved), "--images", str(synth_ilc / "images"),
                            "--weights", "none", "--out", str(out)])
    assert r.exit_code == 1
    assert r.stderr.strip() == (f"wsis: error: {synth_ilc / 'images' / 'gone.png'}: image file not found "
                                f"(image {ds['images'][2]['id']} of {moved})")
    assert not out.exists()

    for args in (["--backbone", "vgg16"], ["--lr", "0"], ["--size", "16"], ["--epochs", "0"], ["--device", "tpu"]):
        r = train(runner, synth_ilc, "--out", out, *args)
        assert r.exit_code == 2, (args, r.output)
    r = train(runner, synth_ilc, "--out", tmp_path)
    assert r.exit_code == 2
    r = runner.invoke(app, ["train", "classifier", str(synth_ilc / "ilc.json"), "--images", str(synth_ilc / "images")])
    assert r.exit_code == 2 and "--out" in r.output  # --out is required


def test_help(runner):
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "train" in r.stdout
    r = runner.invoke(app, ["train", "--help"])
    assert r.exit_code == 0 and "classifier" in r.stdout
    r = runner.invoke(app, ["train", "classifier", "--help"], env={"COLUMNS": "200"})
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0 and "Offline, use none or a path" in text
    for opt in ("--backbone", "--weights", "--epochs", "--batch-size", "--lr", "--size", "--device", "--amp",
                "--workers", "--resume", "--seed"):
        assert opt in text


def test_threads_option_sets_torch_threads_for_the_run_only(runner, synth_ilc, tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "t.pt"
    r = train(runner, synth_ilc, "--epochs", 1, "--out", out, "--device", "cpu", "--threads", 2)
    assert r.exit_code == 0, r.output
    assert "on cpu (2 threads)" in r.stderr and "img/s, loading" in r.stderr
    assert torch.load(out, weights_only=True)["history"][0]["threads"] == 2
    assert torch.get_num_threads() == before  # the caller's setting comes back
    r = train(runner, synth_ilc, "--epochs", 1, "--out", tmp_path / "u.pt", "--threads", -1)
    assert r.exit_code == 2 and "--threads" in r.output
