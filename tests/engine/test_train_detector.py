"""Training a detector: exact resume through both phases, the IoU phase, weights, DDP (gloo), AMP."""

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

from wsis_cli.coco import load_dataset
from wsis_cli.engine.predictor import Predictor
from wsis_cli.engine.train_detector import DetectorConfig, train_detector
from wsis_cli.errors import WsisError
from wsis_cli.models.detector import build_detector

from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(backbone="resnet18", weights="none", min_size=96, max_size=96, fpn_channels=32, head_channels=64,
            keep_epochs=0, scale_jitter=False, warmup_iters=2)


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
    predictor = Predictor.from_run(tmp_path / "r")
    assert predictor.config == config["model"] and not predictor.model.training


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
    model = Predictor.from_run(run).model
    assert sum(torch.isfinite(p).all().item() for p in model.parameters()) == len(list(model.parameters()))


@pytest.mark.gpu
def test_amp_training_on_cuda(synth, tmp_path):
    ds = load_dataset(synth / "gt.json")
    cfg = DetectorConfig(**TINY, epochs=2, batch_size=2, amp=True, iou_head=True, iou_epochs=1)
    out = train_detector(ds, synth / "images", cfg, run=tmp_path / "amp", device="cuda")
    assert all(np.isfinite(h["loss"]) for h in out["history"])
    state = torch.load(tmp_path / "amp" / "last.pt", weights_only=True)
    assert state["scaler"] is not None
    predictor = Predictor.from_run(tmp_path / "amp", device="cuda")
    assert next(predictor.model.parameters()).is_cuda
