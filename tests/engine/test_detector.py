"""The Mask R-CNN model and trainer: mask loss on box-only annotations, the IoU branch, data
rules, resume, weights, and distributed training with gloo on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from wsis_cli.coco import Dataset, load_dataset, parse_dataset
from wsis_cli.engine.detector import DetectorConfig, epoch_batches, load_run, train_detector, training_set
from wsis_cli.errors import WsisError
from wsis_cli.models.detector import _mask_ious, build_detector, iou_forward, iou_inverse, model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(backbone="resnet18", weights="none", min_size=96, max_size=96, fpn_channels=32, head_channels=64,
            keep_epochs=0, scale_jitter=False, warmup_iters=2)


def tiny_config(**kw):
    base = dict(backbone="resnet18", category_ids=[1, 2], category_names=["a", "b"], min_size=96, max_size=96,
                fpn_channels=32, head_channels=64, pretrained=False)
    base.update(kw)
    return model_config(**base)


def one_target(has_mask: bool):
    masks = torch.zeros(1, 96, 96, dtype=torch.uint8)
    masks[0, 20:60, 30:70] = 1
    return {"boxes": torch.tensor([[30.0, 20.0, 70.0, 60.0]]), "labels": torch.tensor([1]), "masks": masks,
            "has_mask": torch.tensor([has_mask])}


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3", "resnet50"])
@pytest.mark.parametrize("boxes_only", [False, True])
def test_every_backbone_trains_and_predicts(backbone, boxes_only):
    torch.manual_seed(0)
    model = build_detector(tiny_config(backbone=backbone, boxes_only=boxes_only, iou_head=not boxes_only))
    model.train()
    losses = model([torch.rand(3, 96, 96)], [one_target(True)])
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | (set() if boxes_only else {"loss_mask"})
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 80)])[0]
    assert ("masks" in out) is not boxes_only and ("iou" in out) is not boxes_only
    if not boxes_only:
        assert out["masks"].shape[1:] == (1, 96, 80)
        assert ((out["iou"] >= 0) & (out["iou"] <= 1)).all()


def test_box_only_annotations_are_left_out_of_the_mask_loss():
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    model.train()
    x = [torch.rand(3, 96, 96)]
    heads = model.roi_heads
    boxes_only = model(x, [one_target(False)])
    assert float(boxes_only["loss_mask"].detach()) == 0.0
    model.zero_grad()
    boxes_only["loss_mask"].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in heads.mask_head.parameters())
    model.zero_grad()
    with_mask = model(x, [one_target(True)])
    assert float(with_mask["loss_mask"].detach()) > 0.1
    with_mask["loss_mask"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in heads.mask_head.parameters())


def test_mask_iou_targets_count_the_ground_truth_outside_the_box():
    gt = torch.zeros(1, 250, 250, dtype=torch.uint8)
    gt[0, 20:120, 20:220] = 1  # 100 x 200 px; the proposal below covers its left half
    props = torch.tensor([[20.0, 20.0, 120.0, 120.0]])
    logits = torch.full((1, 3, 28, 28), 10.0)  # predicts the whole box as the class-1 mask
    iou = _mask_ious(logits, [props], [torch.tensor([1])], [gt], [torch.tensor([0])], [torch.tensor([20000.0])])
    # 10000 px predicted, all inside a 20000 px mask (torchvision's target projection loses ~1 px per side)
    assert iou.tolist() == pytest.approx([0.5], abs=0.02)
    empty = _mask_ious(torch.full((1, 3, 28, 28), -10.0), [props], [torch.tensor([1])], [gt], [torch.tensor([0])],
                       [torch.tensor([20000.0])])
    assert empty.tolist() == [0.0]


@pytest.mark.parametrize("target", ["iou", "sqrt", "square"])
def test_iou_targets_invert(target):
    iou = torch.linspace(0, 1, 11)
    assert torch.allclose(iou_inverse(iou_forward(iou, target), target), iou, atol=1e-6)
    assert iou_forward(torch.tensor([0.25]), "sqrt").item() == pytest.approx(0.5)


def test_model_config_rejects_bad_options():
    with pytest.raises(WsisError, match="--backbone must be one of"):
        tiny_config(backbone="vgg")
    with pytest.raises(WsisError, match="--iou-target"):
        tiny_config(iou_target="log")
    with pytest.raises(WsisError, match="--boxes-only"):
        tiny_config(boxes_only=True, iou_head=True)


# ----------------------------------------------------------------------------- data rules
def _ds(anns: list[dict], n_images: int = 3) -> Dataset:
    images = [{"id": i, "file_name": f"{i}.png", "height": 32, "width": 32} for i in range(1, n_images + 1)]
    for k, a in enumerate(anns, start=1):
        a.setdefault("id", k)
    return parse_dataset({"images": images, "annotations": anns,
                          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, path="t.json")


def _square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def test_training_set_rules(tmp_path):
    for i in range(1, 4):
        (tmp_path / f"{i}.png").write_bytes(b"")
    ds = _ds([
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "segmentation": _square(2, 2, 10)},
        {"image_id": 1, "category_id": 2, "bbox": [15, 15, 10, 10]},                      # box only
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 30, 30], "iscrowd": 1, "segmentation": _square(0, 0, 30)},
        {"image_id": 2, "category_id": 1, "bbox": [2, 2, 10, 10], "wsis": {"valid": False}},
        {"image_id": 2, "category_id": 1, "bbox": [5, 5, 0.5, 8]},                        # degenerate
        {"image_id": 3, "category_id": 1},                                                # IL+C: image left out
    ])
    data = training_set(ds, tmp_path)
    assert [im["id"] for im in data.images] == [1, 2]
    assert [[a["id"] for a in anns] for anns in data.anns] == [[1, 2], [4]]
    assert data.skipped == {"crowd": 1, "invalid": 0, "degenerate_box": 1, "image_level_images": 1}
    valid = training_set(ds, tmp_path, only_valid=True)
    assert [[a["id"] for a in anns] for anns in valid.anns] == [[1, 2], []] and valid.skipped["invalid"] == 1
    boxes = _ds([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}])
    with pytest.raises(WsisError, match="no annotation has a mask; give --boxes-only"):
        training_set(boxes, tmp_path)
    assert len(training_set(boxes, tmp_path, boxes_only=True).images) == 3
    with pytest.raises(WsisError, match="no image to train on"):
        training_set(_ds([{"image_id": i, "category_id": 1} for i in (1, 2, 3)]), tmp_path)


def test_epoch_batches_split_every_image_between_ranks():
    one = epoch_batches(7, 2, seed=3, epoch=1)
    assert sorted(i for b in one for i in b) == list(range(7)) and [len(b) for b in one] == [2, 2, 2, 1]
    assert one == epoch_batches(7, 2, seed=3, epoch=1) and one != epoch_batches(7, 2, seed=3, epoch=2)
    ranks = [epoch_batches(7, 2, seed=3, epoch=1, rank=r, world=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 8 slots (7 padded), 4 each, equal step counts
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == 8 and set(seen) == set(range(7))


# ----------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from wsis_cli.cli.app import app

    out = tmp_path_factory.mktemp("synth") / "d"
    r = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--n", "3", "--size", "96", "--classes", "2",
                                 "--seed", "2"])
    assert r.exit_code == 0, r.output
    return out


def _weights(run: Path) -> dict:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly_through_both_phases(synth, tmp_path):
    ds = load_dataset(synth / "gt.json")
    cfg = DetectorConfig(**TINY, epochs=2, batch_size=2, lr=0.01, iou_head=True, iou_epochs=2, seed=5)
    whole = train_detector(ds, synth / "images", cfg, run=tmp_path / "whole")
    assert [h["phase"] for h in whole["history"]] == ["seg", "seg", "iou", "iou"]
    # stop after epoch 1 (seg) and after epoch 3 (the first IoU epoch): kill by a progress hook
    for stop_after in (1, 3):
        run = tmp_path / f"parts{stop_after}"

        def stop(done, total, stop_after=stop_after, run=run):
            per = total // 4
            if done == stop_after * per + 1:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train_detector(ds, synth / "images", cfg, run=run, progress=stop)
        assert torch.load(run / "last.pt", weights_only=True)["epoch"] == stop_after
        resumed = train_detector(ds, synth / "images", cfg, run=run, resume=True)
        assert resumed["resumed_from"] == stop_after
        assert _same(_weights(run), _weights(tmp_path / "whole"))
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
    # the IoU phase leaves the segmentation weights alone
    seg = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert seg["phase"] == "iou"
    with pytest.raises(WsisError, match="--lr 0.01, not 0.02"):
        train_detector(ds, synth / "images", DetectorConfig(**{**TINY, "keep_epochs": 0}, epochs=2, batch_size=2,
                                                            lr=0.02, iou_head=True, iou_epochs=2, seed=5),
                       run=tmp_path / "whole", resume=True)


def test_iou_phase_trains_only_the_iou_branch(synth, tmp_path):
    ds = load_dataset(synth / "gt.json")
    cfg = DetectorConfig(**{**TINY, "keep_epochs": -1}, epochs=1, batch_size=3, lr=0.01, iou_head=True, iou_epochs=1)
    train_detector(ds, synth / "images", cfg, run=tmp_path / "r")
    e1 = torch.load(tmp_path / "r" / "epochs" / "epoch-001.pt", weights_only=True)["model"]
    e2 = torch.load(tmp_path / "r" / "epochs" / "epoch-002.pt", weights_only=True)["model"]
    changed = {k for k in e1 if not torch.equal(e1[k], e2[k])}
    assert changed and all(k.startswith("roi_heads.iou_head.") for k in changed)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"]["iou_head"] and config["model"]["category_ids"] == [1, 2]
    model, cfg2 = load_run(tmp_path / "r")
    assert cfg2 == config["model"] and not model.training


def test_weights_from_a_file_and_offline_hub(synth, tmp_path, monkeypatch):
    ds = load_dataset(synth / "gt.json")
    cfg = DetectorConfig(**TINY, epochs=1, batch_size=3)
    train_detector(ds, synth / "images", cfg, run=tmp_path / "a")
    from dataclasses import replace

    pretrained = replace(cfg, weights=str(tmp_path / "a" / "best.pt"))
    train_detector(ds, synth / "images", pretrained, run=tmp_path / "b")
    first = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()][0]
    assert first["loss"] < [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()][0][
        "loss"]
    # a ResNet-18 state dict (e.g. torchvision's ImageNet file) fills the backbone
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    build_detector(tiny_config(pretrained=True), weights=str(tmp_path / "r18.pth"))
    # and so does a wsis classifier checkpoint (its weights sit under "model", keys backbone.*)
    from wsis_cli.models.classifier import build_classifier

    cls = build_classifier(backbone="resnet18", num_classes=2, weights="none")
    torch.save({"model": cls.state_dict()}, tmp_path / "cls.pt")
    det = build_detector(tiny_config(pretrained=True), weights=str(tmp_path / "cls.pt"))
    assert torch.equal(det.state_dict()["backbone.body.layer1.0.conv1.weight"],
                       cls.state_dict()["backbone.layer1.0.conv1.weight"])
    torch.save({"x": torch.zeros(3)}, tmp_path / "junk.pth")
    with pytest.raises(WsisError, match="no tensor fits this model's backbone"):
        build_detector(tiny_config(), weights=str(tmp_path / "junk.pth"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for weights, backbone in (("imagenet", "resnet18"), ("coco", "mobilenet_v3")):
        with pytest.raises(WsisError, match=rf"--weights {weights}: cannot fetch https://\S+ \(URLError\); offline, "
                                            r"use --weights none or a local file"):
            build_detector(tiny_config(pretrained=True, backbone=backbone), weights=weights)
    with pytest.raises(WsisError, match="no COCO-trained resnet18"):
        build_detector(tiny_config(backbone="resnet18"), weights="coco")


def test_distributed_training_with_gloo_on_two_processes(synth, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "wsis_cli", "train", "maskrcnn", str(synth / "gt.json"), "--images", str(synth / "images"),
           "--out", str(run), "--backbone", "resnet18", "--weights", "none", "--epochs", "2", "--batch-size", "1",
           "--lr", "0.01", "--min-size", "96", "--max-size", "96", "--fpn-channels", "32", "--head-channels", "64",
           "--device", "cpu", "--keep-epochs", "0", "--warmup-iters", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 300 s: {stderr[-2000:]}")
    r = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["world_size"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]       # written once, by rank 0
    assert all(x["images"] == 4 for x in lines)         # 3 images padded to 4, 2 per process, summed over ranks
    assert r.stderr.count("training maskrcnn") == 1 and r.stderr.count("wrote") == 1  # only rank 0 talks
    model, _ = load_run(run)
    assert sum(torch.isfinite(p).all().item() for p in model.parameters()) == len(list(model.parameters()))


@pytest.mark.gpu
def test_amp_training_on_cuda(synth, tmp_path):
    ds = load_dataset(synth / "gt.json")
    cfg = DetectorConfig(**TINY, epochs=2, batch_size=2, amp=True, iou_head=True, iou_epochs=1)
    out = train_detector(ds, synth / "images", cfg, run=tmp_path / "amp", device="cuda")
    assert all(np.isfinite(h["loss"]) for h in out["history"])
    state = torch.load(tmp_path / "amp" / "last.pt", weights_only=True)
    assert state["scaler"] is not None
    model, config = load_run(tmp_path / "amp", device="cuda")
    assert next(model.parameters()).is_cuda
