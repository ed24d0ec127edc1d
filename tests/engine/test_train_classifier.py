"""Training the PRM classifier: labels, augmentation, exact resume, checkpoints, errors, workers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from wsis_cli.coco import Dataset, parse_dataset
from wsis_cli.engine import train_classifier as engine
from wsis_cli.engine.checkpoint import load_checkpoint
from wsis_cli.engine.train_classifier import (
    SCALES,
    ClassifierConfig,
    TrainImages,
    batch_plan,
    image_labels,
    load_classifier,
    train_classifier,
)
from wsis_cli.errors import InputError, WsisError
from wsis_cli.synth import synthesize
from wsis_cli.weaken import weaken

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(backbone="resnet18", weights="none", size=64, batch_size=4, lr=0.01, seed=3)


@pytest.fixture(scope="module")
def synth6(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth6")
    return weaken(parse_dataset(synthesize(root, n=6, size=64, seed=1)), "ilc"), root / "images"


# ----------------------------------------------------------------------------- peaks


def test_image_labels_from_any_supervision_level():
    ds = parse_dataset({
        "images": [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in (1, 2, 3, 4)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2]},
                        {"id": 2, "image_id": 1, "category_id": 7},
                        {"id": 3, "image_id": 2, "category_id": 5, "count": None},
                        {"id": 5, "image_id": 3, "category_id": 7, "count": 2}],
        "categories": [{"id": 7, "name": "b"}, {"id": 5, "name": "a"}]})
    assert image_labels(ds).tolist() == [[1, 0], [0, 1], [1, 0], [0, 0]]  # dataset category order


def test_augmentation_and_batches_are_deterministic(synth6):
    ds, images = synth6
    from wsis_cli.images import image_path

    data = TrainImages([image_path(images, im) for im in ds.images], image_labels(ds), seed=5)
    a, ya = data[(2, 48, 0)]
    b, yb = data[(2, 48, 0)]
    assert a.shape == (3, 48, 48) and torch.equal(a, b) and torch.equal(ya, yb)
    assert 0.0 <= a.min() and a.max() <= 1.0
    views = [data[(2, 48, e)][0] for e in range(6)]
    assert len({v.sum().item() for v in views}) == 6  # a new view each epoch
    assert not torch.equal(data[(2, 48, 0)][0], TrainImages(data.paths, image_labels(ds), seed=6)[(2, 48, 0)][0])

    plan = batch_plan(23, 4, 64, seed=5, epoch=0)
    assert plan == batch_plan(23, 4, 64, seed=5, epoch=0)
    assert sorted(i for idx, _ in plan for i in idx) == list(range(23))
    assert [len(idx) for idx, _ in plan] == [4, 4, 4, 4, 4, 3]
    assert {side for _, side in plan} <= {48, 64, 80} == {int(64 * s) for s in SCALES}
    assert batch_plan(23, 4, 64, seed=5, epoch=1) != plan
    assert {side for e in range(10) for _, side in batch_plan(23, 4, 64, seed=5, epoch=e)} == {48, 64, 80}
    assert {side for _, side in batch_plan(8, 4, 40, seed=-1, epoch=0)} <= {32, 48, 64}  # multiples of 16


# ----------------------------------------------------------------------------- training


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kill", ["between epochs", "mid epoch"])
def test_resume_is_exact(synth6, tmp_path, kill):
    ds, images = synth6
    cfg = ClassifierConfig(epochs=2, **TINY)
    whole = tmp_path / "whole.pt"
    train_classifier(ds, images, cfg, out=whole)

    out = tmp_path / "resumed.pt"
    lines = []

    def log(msg):
        lines.append(msg)
        if kill == "between epochs" and msg.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    def progress(done, total):
        if kill == "mid epoch" and done == total // 2 + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(ds, images, cfg, out=out, log=log, progress=progress)
    assert load_checkpoint(out, kind="wsis-classifier")["epoch"] == 1
    if kill == "mid epoch":
        assert lines[-1] == f"interrupted: {out} holds 1 of 2 epochs; rerun with --resume to continue"
    summary = train_classifier(ds, images, cfg, out=out, resume=True, log=lines.append)
    assert summary["resumed_from"] == 1 and f"resuming {out} after epoch 1 of 2" in lines
    a, b = torch.load(whole, weights_only=True), torch.load(out, weights_only=True)
    _same_state(a["model"], b["model"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for k, state in a["optimizer"]["state"].items():
        _same_state(state, b["optimizer"]["state"][k])
    timing = ("seconds", "images_per_s", "load_share")
    strip = [{k: v for k, v in h.items() if k not in timing} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in timing} for h in b["history"]]
    assert a["epoch"] == b["epoch"] == 2

    said = []
    again = train_classifier(ds, images, cfg, out=out, resume=True, log=said.append)
    assert again["iterations"] == 0 and said == [f"{out} already holds 2 epochs (asked for 2): nothing to train"]


def test_checkpoint_format_and_load_classifier(synth6, tmp_path):
    ds, images = synth6
    out = tmp_path / "c.pt"
    said = []
    summary = train_classifier(ds, images, ClassifierConfig(epochs=1, amp=True, **TINY), out=out, log=said.append)
    assert said[0] == "warning: --amp needs CUDA; training in float32 on cpu"
    assert re.fullmatch(r"training resnet18 \(weights: none\) on 6 images, 4 classes, on cpu \(\d+ threads?\): "
                        r"2 iterations per epoch", said[1]), said[1]
    assert said[2].startswith("epoch 1/1: loss ")
    assert summary["iterations"] == 2 and summary["resumed_from"] is None
    ck = torch.load(out, map_location="cpu", weights_only=True)
    assert ck["format"] == "wsis-classifier" and ck["version"] == 1 and ck["epoch"] == 1
    assert ck["config"] == {"backbone": "resnet18", "num_classes": 4, "category_ids": [1, 2, 3, 4],
                            "category_names": ["disc", "box", "triangle", "star"], "size": 64, "peak_kernel": 3}
    assert ck["train"]["weights"] == "none" and ck["train"]["batch_size"] == 4 and ck["scaler"] is None
    assert set(ck["history"][0]) == {"epoch", "loss", "accuracy", "seconds", "images_per_s", "load_share", "threads"}
    assert 0.0 <= ck["history"][0]["accuracy"] <= 1.0
    model, config = load_classifier(out)
    assert not model.training and config == ck["config"]
    _same_state(model.state_dict(), ck["model"])
    with torch.no_grad():
        x = torch.rand(2, 3, 64, 64)
        assert model(x).shape == (2, 4, 4, 4) and model.scores(x).shape == (2, 4)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_resume_refuses_other_options_or_data(synth6, tmp_path):
    ds, images = synth6
    out = tmp_path / "c.pt"
    train_classifier(ds, images, ClassifierConfig(epochs=1, **TINY), out=out)
    with pytest.raises(WsisError, match=r"c.pt: was trained with --lr 0.01, not 0.02; --resume needs the same options"):
        train_classifier(ds, images, ClassifierConfig(epochs=2, **{**TINY, "lr": 0.02}), out=out, resume=True)
    with pytest.raises(WsisError, match="was trained with --size 64, not 96"):
        train_classifier(ds, images, ClassifierConfig(epochs=2, **{**TINY, "size": 96}), out=out, resume=True)
    with pytest.raises(WsisError, match="was trained on another dataset"):
        train_classifier(ds.subset([im["id"] for im in ds.images[:5]]), images, ClassifierConfig(epochs=2, **TINY),
                         out=out, resume=True)
    said = []  # --epochs may grow
    summary = train_classifier(ds, images, ClassifierConfig(epochs=2, **TINY), out=out, resume=True, log=said.append)
    assert summary["resumed_from"] == 1 and len(torch.load(out, weights_only=True)["history"]) == 2
    assert any("the schedule changes from 1 to 2 epochs" in s for s in said)
    # without --resume the file is refused; with --overwrite it is trained afresh
    with pytest.raises(WsisError, match="c.pt: exists; add --resume to continue its training, or --overwrite"):
        train_classifier(ds, images, ClassifierConfig(epochs=1, **TINY), out=out)
    assert torch.load(out, weights_only=True)["epoch"] == 2
    train_classifier(ds, images, ClassifierConfig(epochs=1, **TINY), out=out, overwrite=True)
    assert torch.load(out, weights_only=True)["epoch"] == 1


def test_input_errors(synth6, tmp_path):
    ds, images = synth6
    cfg = ClassifierConfig(epochs=1, **TINY)
    with pytest.raises(WsisError, match="no image has a label"):
        train_classifier(Dataset(images=ds.images, annotations=[], categories=ds.categories, path="il.json"),
                         images, cfg, out=tmp_path / "c.pt")
    with pytest.raises(InputError, match=f"image file not found \\(image {ds.images[0]['id']} of "):
        train_classifier(ds, tmp_path, cfg, out=tmp_path / "c.pt")
    bad = tmp_path / "images"
    bad.mkdir()
    for im in ds.images:
        (bad / im["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        (bad / im["file_name"]).write_bytes((images / im["file_name"]).read_bytes())
    (bad / ds.images[3]["file_name"]).write_text("not a png")  # found before the first step
    with pytest.raises(WsisError, match=f"not an image file, its header cannot be read \\(image {ds.images[3]['id']} of "):
        train_classifier(ds, bad, cfg, out=tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_training_reduces_the_loss(tmp_path):
    """From scratch on 24 synthetic images: the loss falls clearly below its start and below the
    best label-blind guess (each class's frequency)."""
    ds = weaken(parse_dataset(synthesize(tmp_path, n=24, size=64, seed=0)), "ilc")
    p = image_labels(ds).mean(0)
    blind = float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    cfg = ClassifierConfig(backbone="resnet18", weights="none", size=64, epochs=12, batch_size=8, lr=0.03, seed=0)
    loss = [h["loss"] for h in train_classifier(ds, tmp_path / "images", cfg, out=tmp_path / "c.pt")["history"]]
    start, end = np.mean(loss[:2]), np.mean(loss[-2:])
    assert end < 0.85 * start and end < blind - 0.03, (loss, blind)


# ----------------------------------------------------------------------------- weights, checkpoints, devices


def test_engine_module_exports():
    assert set(engine.__all__) >= {"image_tensor", "train_classifier", "load_classifier", "ClassifierConfig"}


def test_worker_processes_give_the_same_weights(synth6, tmp_path):
    ds, images = synth6
    for workers in (0, 2):
        train_classifier(ds, images, ClassifierConfig(epochs=1, workers=workers, **TINY), out=tmp_path / f"{workers}.pt")
    _same_state(torch.load(tmp_path / "0.pt", weights_only=True)["model"],
                torch.load(tmp_path / "2.pt", weights_only=True)["model"])
    bad = tmp_path / "images"
    bad.mkdir()
    for im in ds.images:  # a PNG whose header reads but whose pixels do not decode: found by a worker
        (bad / im["file_name"]).write_bytes((images / im["file_name"]).read_bytes()[:120])
    with pytest.raises(WsisError, match=r"^\S+: not an image OpenCV can decode \(image \d+ of "):
        train_classifier(ds, bad, ClassifierConfig(epochs=1, workers=2, **TINY), out=tmp_path / "x.pt")
    for im in ds.images:  # not an image at all: found before the first step
        (bad / im["file_name"]).write_bytes(b"junk")
    with pytest.raises(WsisError, match=r"^\S+: not an image file, its header cannot be read \(image \d+ of "):
        train_classifier(ds, bad, ClassifierConfig(epochs=1, workers=2, **TINY), out=tmp_path / "y.pt")
    assert not (tmp_path / "y.pt").exists()


@pytest.mark.gpu
def test_amp_on_cuda_and_resume(synth6, tmp_path):
    ds, images = synth6
    out = tmp_path / "c.pt"
    train_classifier(ds, images, ClassifierConfig(epochs=1, amp=True, **TINY), out=out, device="cuda")
    ck = torch.load(out, weights_only=True)
    assert ck["scaler"] and ck["scaler"]["scale"] > 0 and np.isfinite(ck["history"][0]["loss"])
    train_classifier(ds, images, ClassifierConfig(epochs=2, amp=True, **TINY), out=out, device="cuda", resume=True)
    model, _ = load_classifier(out, device="cuda")
    with torch.no_grad():
        assert model.scores(torch.rand(1, 3, 64, 64, device="cuda")).shape == (1, 4)
