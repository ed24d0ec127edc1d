"""Training the segmenter: it overfits a few synthetic images, resume is exact, checkpoints, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsis_cli.coco import parse_dataset
from wsis_cli.engine.checkpoint import load_checkpoint
from wsis_cli.engine.segmenter_data import label_map
from wsis_cli.engine.train_segmenter import (SegmenterConfig, batch_plan, confusion, load_segmenter, mean_iou,
                                             train_segmenter)
from wsis_cli.errors import WsisError
from wsis_cli.images import read_image
from wsis_cli.models.backbones import build_resnet
from wsis_cli.synth import synthesize
from wsis_cli.weaken import weaken

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(backbone="resnet18", weights="none", threads=1, seed=0)


@pytest.fixture(scope="module")
def synth4(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth4")
    return parse_dataset(synthesize(root, n=4, size=64, seed=0, n_classes=2)), root / "images"


def _eval_miou(path, ds, images) -> float:
    model, config = load_segmenter(path)
    assert not model.training and config["size"] == 64
    conf = torch.zeros(3, 3, dtype=torch.long)
    for im in ds.images:
        x = torch.from_numpy(read_image(images / im["file_name"])).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            conf += confusion(model(x), torch.from_numpy(label_map(ds, im)).long()[None], 3)
    return mean_iou(conf)


def test_the_ss_branch_overfits_a_few_images(synth4, tmp_path):
    ds, images = synth4
    cfg = SegmenterConfig(size=64, epochs=6, batch_size=2, lr=2e-3, flip=False, scale_jitter=False, **TINY)
    out = tmp_path / "seg.pt"
    summary = train_segmenter(ds, images, cfg, out=out)
    h = summary["history"]
    assert len(h) == 6 and h[-1]["loss"] < h[0]["loss"] / 2
    assert _eval_miou(out, ds, images) >= 0.8
    # its trunk starts another ResNet (e.g. the MIL branch's)
    trunk = build_resnet("resnet18", weights=str(out))
    state = load_checkpoint(out, kind="wsis-segmenter")["model"]
    assert torch.equal(trunk.layer3[0].conv1.weight, state["backbone.layer3.0.conv1.weight"])


def test_resume_is_exact(synth4, tmp_path):
    ds, images = synth4
    cfg = SegmenterConfig(size=32, epochs=2, batch_size=3, lr=1e-3, **TINY)
    whole = tmp_path / "whole.pt"
    train_segmenter(ds, images, cfg, out=whole)
    out = tmp_path / "resumed.pt"

    def stop(msg):
        if msg.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmenter(ds, images, cfg, out=out, log=stop)
    assert load_checkpoint(out, kind="wsis-segmenter")["epoch"] == 1
    lines = []
    summary = train_segmenter(ds, images, cfg, out=out, resume=True, log=lines.append)
    assert summary["resumed_from"] == 1 and f"resuming {out} after epoch 1 of 2" in lines
    a, b = torch.load(whole, weights_only=True), torch.load(out, weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    timing = ("seconds", "images_per_s", "load_share")
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["history"]] == \
           [{k: v for k, v in h.items() if k not in timing} for h in b["history"]]
    assert a["format"] == "wsis-segmenter" and a["config"]["category_ids"] == [1, 2] and a["epoch"] == 2
    with pytest.raises(WsisError, match="exists; add --resume"):
        train_segmenter(ds, images, cfg, out=out)
    with pytest.raises(WsisError, match="was trained with --lr"):
        train_segmenter(ds, images, SegmenterConfig(size=32, epochs=3, batch_size=3, lr=2e-3, **TINY), out=out,
                        resume=True)


def test_batches_and_miou():
    plan = batch_plan([0, 2, 3, 5, 7], 2, seed=1, epoch=0)
    assert plan == batch_plan([0, 2, 3, 5, 7], 2, seed=1, epoch=0) != batch_plan([0, 2, 3, 5, 7], 2, seed=1, epoch=1)
    assert [len(b) for b in plan] == [2, 2, 1] and sorted(sum(plan, [])) == [0, 2, 3, 5, 7]
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 1.0  # predicts class 1 everywhere
    labels = torch.tensor([[[1, 1], [0, 255]]])
    c = confusion(logits, labels, 3)
    assert c.tolist() == [[0, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert mean_iou(c) == pytest.approx((0 + 2 / 3) / 2)  # class 2 occurs nowhere: not counted
    assert mean_iou(np.eye(3)) == 1.0 and mean_iou(np.zeros((3, 3))) == 0.0


def test_nothing_to_learn_from(synth4, tmp_path):
    ds, images = synth4
    cfg = SegmenterConfig(size=32, epochs=1, batch_size=2, **TINY)
    with pytest.raises(WsisError, match="no image to train on"):
        train_segmenter(weaken(ds, "il"), images, cfg, out=tmp_path / "a.pt")
    with pytest.raises(WsisError, match="has no categories"):
        train_segmenter(parse_dataset({"images": [], "annotations": [], "categories": []}), images, cfg,
                        out=tmp_path / "a.pt")
    assert not (tmp_path / "a.pt").exists()
    with pytest.raises(WsisError, match="not a wsis-segmenter checkpoint"):
        (tmp_path / "x.pt").write_text("junk")
        load_segmenter(tmp_path / "x.pt")
