"""Training the MIL branch: it picks the proposal over the object on hand-made bags; exact resume;
the checkpoint; errors. A toy trunk (local receptive field) stands in for the ResNet so a few CPU
epochs suffice; the ResNet path is covered by tests/models/test_mil.py and the CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsis_cli.coco import parse_dataset
from wsis_cli.engine.checkpoint import load_checkpoint
from wsis_cli.engine.train_mil import MILConfig, batch_plan, load_mil, train_mil
from wsis_cli.errors import WsisError
from wsis_cli.images import write_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S, O = 64, 20  # image and object sides
COLOURS = [(220, 40, 40), (40, 40, 220)]


class ToyTrunk(nn.Module):
    """Stride 16, 32 channels, a receptive field of ~20 px: RoI features see their box."""

    channels, stride = 32, 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(4),
                                 nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AvgPool2d(4))

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def toy_trunk(monkeypatch):
    import wsis_cli.models.mil as mil

    monkeypatch.setattr(mil, "build_resnet", lambda name, weights="none": ToyTrunk())


def make_bags(root: Path, n: int = 16, seed: int = 0) -> dict:
    """``n`` images with one red square (class 1) or blue disc (class 2) on grey noise; each bag
    holds {the object's box, a box half off it, a box on the background}, shuffled; the truth is
    kept in ``wsis.truth``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = rng.normal(120, 20, (S, S, 3)).clip(0, 255).astype(np.uint8)
        c = i % 2
        x, y = (int(v) for v in rng.integers(0, S - O, size=2))
        if c == 0:
            img[y:y + O, x:x + O] = COLOURS[0]
        else:
            yy, xx = np.mgrid[0:O, 0:O]
            img[y:y + O, x:x + O][(xx - O / 2 + .5) ** 2 + (yy - O / 2 + .5) ** 2 <= (O / 2) ** 2] = COLOURS[1]
        write_image(root / "images" / f"{i}.png", img)
        bx, by = (0 if x > S / 2 - O / 2 else S - O), (0 if y > S / 2 - O / 2 else S - O)
        hx = x + O / 2 if x + O / 2 + O <= S else x - O / 2
        own = [float(x), float(y), float(O), float(O)]
        bag = [own, [hx, float(y), float(O), float(O)], [float(bx), float(by), float(O), float(O)]]
        rng.shuffle(bag)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": S, "width": S})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": c + 1, "bbox": own, "iscrowd": 0,
                     "wsis": {"bag": bag, "bag_rank": [0.0, 0.0, 0.0], "truth": own}})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]}


TOY = dict(backbone="resnet18", weights="none", size=128, batch_size=4, lr=3e-3, reduce=32, hidden=64, seed=0,
           threads=1)


def test_mil_picks_the_proposal_over_the_object(tmp_path, toy_trunk):
    from wsis_cli.pseudo.mil import pseudolabel_mil

    ds = parse_dataset(make_bags(tmp_path), path="bags.json")
    summary = train_mil(ds, tmp_path / "images", MILConfig(epochs=6, **TOY), out=tmp_path / "m.pt")
    h = summary["history"]
    assert h[-1]["loss"] < h[0]["loss"] and h[-1]["accuracy"] == 1.0
    out, s = pseudolabel_mil(ds, images_dir=tmp_path / "images", model=tmp_path / "m.pt")
    right = sum(a["bbox"] == a["wsis"]["truth"] for a in out.annotations)
    assert right >= 15, right  # chance: about a third
    assert s["bags"] == 16 and s["mean_iou_seed"] >= 0.9
    a = out.annotations[0]
    assert a["wsis"]["method"] == "mil" and a["wsis"]["box_before"] == ds.annotations[0]["bbox"]
    assert 0 < a["wsis"]["mil_score"] <= 1 and a["wsis"]["bag"] == ds.annotations[0]["wsis"]["bag"]


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_deterministic_and_resume_is_exact(tmp_path, toy_trunk):
    ds = parse_dataset(make_bags(tmp_path, n=6), path="bags.json")
    cfg = MILConfig(epochs=2, **{**TOY, "batch_size": 2})
    train_mil(ds, tmp_path / "images", cfg, out=tmp_path / "a.pt")
    train_mil(ds, tmp_path / "images", cfg, out=tmp_path / "b.pt")
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    _same_state(a["model"], b["model"])

    out = tmp_path / "r.pt"

    def progress(done, total):
        if done == total // 2 + 1:
            raise KeyboardInterrupt

    lines = []
    with pytest.raises(KeyboardInterrupt):
        train_mil(ds, tmp_path / "images", cfg, out=out, progress=progress, log=lines.append)
    assert lines[-1] == f"interrupted: {out} holds 1 of 2 epochs; rerun with --resume to continue"
    summary = train_mil(ds, tmp_path / "images", cfg, out=out, resume=True, log=lines.append)
    assert summary["resumed_from"] == 1
    _same_state(a["model"], torch.load(out, weights_only=True)["model"])
    said = []
    assert train_mil(ds, tmp_path / "images", cfg, out=out, resume=True, log=said.append)["iterations"] == 0
    with pytest.raises(WsisError, match="was trained with --lr"):
        train_mil(ds, tmp_path / "images", MILConfig(epochs=3, **{**TOY, "batch_size": 2, "lr": 1e-2}), out=out,
                  resume=True)
    with pytest.raises(WsisError, match="exists; add --resume"):
        train_mil(ds, tmp_path / "images", cfg, out=out)


def test_checkpoint_format_and_load(tmp_path):
    ds = parse_dataset(make_bags(tmp_path, n=2), path="bags.json")
    cfg = MILConfig(epochs=1, **{**TOY, "size": 64, "reduce": 8, "hidden": 16})
    train_mil(ds, tmp_path / "images", cfg, out=tmp_path / "m.pt")  # the real resnet18 trunk
    ck = load_checkpoint(tmp_path / "m.pt", kind="wsis-mil")
    assert ck["version"] == 1 and ck["epoch"] == 1
    assert ck["config"] == {"backbone": "resnet18", "num_classes": 2, "category_ids": [1, 2],
                            "category_names": ["square", "disc"], "size": 64, "reduce": 8, "hidden": 16,
                            "roi_size": 7}
    assert set(ck["train"]) == {"weights", "epochs", "batch_size", "lr", "seed", "data"}
    model, config = load_mil(tmp_path / "m.pt")
    assert not model.training and config == ck["config"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_batch_plan_and_input_errors(tmp_path):
    plan = batch_plan(7, 3, seed=1, epoch=0)
    assert plan == batch_plan(7, 3, seed=1, epoch=0) and [len(b) for b in plan] == [3, 3, 1]
    assert sorted(i for b in plan for i in b) == list(range(7)) and plan != batch_plan(7, 3, seed=1, epoch=1)
    obj = make_bags(tmp_path, n=2)
    cfg = MILConfig(epochs=1, **TOY)
    no_bag = {**obj, "annotations": [{k: v for k, v in a.items() if k != "wsis"} for a in obj["annotations"]]}
    with pytest.raises(WsisError, match=r"bags.json: annotation 1 .*has no 'wsis.bag'"):
        train_mil(parse_dataset(no_bag, path="bags.json"), tmp_path / "images", cfg, out=tmp_path / "m.pt")
    bad = {**obj, "annotations": [{**obj["annotations"][0], "wsis": {"bag": [[1, 2, 3]]}}]}
    with pytest.raises(WsisError, match="'wsis.bag' must be a list of"):
        train_mil(parse_dataset(bad, path="bags.json"), tmp_path / "images", cfg, out=tmp_path / "m.pt")
    empty = {**obj, "annotations": [{**a, "wsis": {"bag": []}} for a in obj["annotations"]]}
    with pytest.raises(WsisError, match="holds no non-empty bag"):
        train_mil(parse_dataset(empty, path="bags.json"), tmp_path / "images", cfg, out=tmp_path / "m.pt")
    with pytest.raises(WsisError, match="image file not found"):
        train_mil(parse_dataset(obj, path="bags.json"), tmp_path, cfg, out=tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
