"""`wsis train maskrcnn` through the CLI on 3 synthetic 64-px images: the run folder, validation,
box-only training, resume, and the usage and input errors."""

import contextlib
import json
import re
import urllib.error

import pytest
import torch

from conftest import write
from wsis_cli.cli.app import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--backbone", "resnet18", "--weights", "none", "--fpn-channels", "16", "--head-channels", "32",
        "--min-size", "64", "--max-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("maskrcnn")
    runner = CliRunner()
    r = runner.invoke(app, ["data", "synth", "--out", str(root), "--n", "3", "--size", "64", "--classes", "2",
                            "--seed", "0"])
    assert r.exit_code == 0, r.output
    for level in ("box", "ilc"):
        r = runner.invoke(app, ["data", "weaken", str(root / "gt.json"), "--to", level, "--out",
                                str(root / f"{level}.json")])
        assert r.exit_code == 0, r.output
    return root


def train(runner, root, *args, labels="gt.json"):
    return runner.invoke(app, ["train", "maskrcnn", str(root / labels), "--images", str(root / "images"), *TINY,
                               *map(str, args)])


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def flat(text: str) -> str:
    """Usage-error text without rich's box, line breaks and quotes."""
    return " ".join(text.replace("│", " ").replace("'", "").split())


def one_line_error(r) -> str:
    assert r.exit_code == 1, r.output
    assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("wsis: error: "), r.stderr
    return r.stderr.strip()


def test_run_folder(runner, synth, tmp_path):
    run = tmp_path / "run"
    r = train(runner, synth, "--out", run, "--epochs", 3, "--keep-epochs", 2, "--batch-size", 2, "--seed", 3)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # nothing on stdout
    assert re.search(r"training maskrcnn resnet18 \(weights: none\) on 3 images, 2 classes, on cpu \(\d+ threads?\): "
                     r"2 iterations per epoch", r.stderr), r.stderr
    assert "epoch 3/3 (seg): loss " in r.stderr and f"wrote {run}: 3 epochs, loss " in r.stderr
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "epochs", "last.pt", "metrics.jsonl"]
    assert sorted(p.name for p in (run / "epochs").iterdir()) == ["epoch-002.pt", "epoch-003.pt"]  # --keep-epochs 2

    config = json.loads((run / "config.json").read_text())
    assert config["format"] == "wsis-maskrcnn" and set(config) >= {"model", "train"}
    model = config["model"]
    assert model["architecture"] == "maskrcnn" and model["backbone"] == "resnet18"
    assert model["category_ids"] == [1, 2] and model["category_names"] == ["disc", "box"]
    assert (model["min_size"], model["max_size"], model["fpn_channels"], model["head_channels"]) == (64, 64, 16, 32)
    assert model["iou_head"] is False
    t = config["train"]
    assert (t["epochs"], t["batch_size"], t["seed"], t["weights"], t["keep_epochs"]) == (3, 2, 3, "none", 2)

    lines = metrics(run)
    assert [m["epoch"] for m in lines] == [1, 2, 3] and {m["phase"] for m in lines} == {"seg"}
    for m in lines:
        assert m["loss"] > 0 and m["images_per_s"] > 0 and m["images"] == 3
        assert 0 <= m["load_share"] <= 1 and m["threads"] >= 1  # how much of the epoch waited for data
        assert m["loss"] == pytest.approx(sum(m["losses"].values()), abs=1e-5)
        assert set(m["losses"]) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                                    "loss_rpn_box_reg"}
        assert "val_map50" not in m

    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert last["format"] == "wsis-maskrcnn" and last["epoch"] == 3 and last["phase"] == "seg"
    assert last["config"] == model and [h["epoch"] for h in last["history"]] == [1, 2, 3]
    assert {"optimizer", "history", "best"} <= set(last)
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 3 and "optimizer" not in best  # no --val: the last epoch is the best
    assert same(best["model"], last["model"]) and same(weights(run / "epochs" / "epoch-003.pt"), last["model"])
    assert not same(weights(run / "epochs" / "epoch-002.pt"), last["model"])
    assert any("mask_head" in k for k in last["model"])

    # --keep-epochs 0 keeps no per-epoch file; -1 keeps them all
    r = train(runner, synth, "--out", tmp_path / "none", "--epochs", 1, "--keep-epochs", 0, "--batch-size", 3)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "none" / "epochs").exists()
    r = train(runner, synth, "--out", tmp_path / "all", "--epochs", 2, "--keep-epochs", -1, "--batch-size", 3)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "all" / "epochs").iterdir()) == ["epoch-001.pt", "epoch-002.pt"]


def test_validation_picks_best(runner, synth, tmp_path):
    run = tmp_path / "run"
    r = train(runner, synth, "--out", run, "--epochs", 3, "--keep-epochs", -1, "--batch-size", 3, "--lr", 0.05,
              "--val", synth / "gt.json", "--val-images", synth / "images")
    assert r.exit_code == 0, r.output
    lines = metrics(run)
    scores = [m["val_map50"] for m in lines]
    assert all(0.0 <= s <= 1.0 for s in scores)
    want = scores.index(max(scores)) + 1  # the first epoch of the highest mAP
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == want
    assert same(best["model"], weights(run / "epochs" / f"epoch-{want:03d}.pt"))
    assert torch.load(run / "last.pt", weights_only=True)["best"] == {"epoch": want, "map50": scores[want - 1]}
    assert f"epoch 1/3 (seg): loss {lines[0]['loss']:.4f}, val mAP@0.5 {scores[0]:.3f}" in r.stderr
    assert f"best val mAP@0.5 {max(scores):.3f} (epoch {want})" in r.stderr
    # --val alone reads its images from --images
    r = train(runner, synth, "--out", tmp_path / "b", "--epochs", 1, "--keep-epochs", 0, "--batch-size", 3,
              "--lr", 0.05, "--val", synth / "gt.json")
    assert r.exit_code == 0, r.output
    assert metrics(tmp_path / "b")[0]["val_map50"] == scores[0]  # the same first epoch, the same images


def test_boxes_only(runner, synth, tmp_path):
    run = tmp_path / "det"
    r = train(runner, synth, "--out", run, "--epochs", 1, "--keep-epochs", 0, "--batch-size", 3, "--boxes-only",
              labels="box.json")
    assert r.exit_code == 0, r.output
    assert "training fasterrcnn resnet18" in r.stderr
    assert json.loads((run / "config.json").read_text())["model"]["architecture"] == "fasterrcnn"
    assert set(metrics(run)[0]["losses"]) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                                              "loss_rpn_box_reg"}
    assert not any("mask" in k for k in weights(run / "best.pt"))

    # a box-only dataset without --boxes-only: one line that points at it, and no run folder
    r = train(runner, synth, "--out", tmp_path / "masks", "--epochs", 1, labels="box.json")
    assert one_line_error(r) == (f"wsis: error: {synth / 'box.json'}: no annotation has a mask; give --boxes-only "
                                 "to train a detector, --box-loss boxinst to train masks from the boxes, or make "
                                 "masks first (wsis pseudolabel grabcut)")
    assert not (tmp_path / "masks").exists()
    # image-level labels alone give nothing to train on
    r = train(runner, synth, "--out", tmp_path / "ilc", "--epochs", 1, labels="ilc.json")
    assert "no image to train on" in one_line_error(r)


def test_resume_grows_the_run_to_the_weights_of_a_straight_one(runner, synth, tmp_path):
    # one iteration per epoch (--batch-size 3 of 3 images) and no warm-up: the learning rate of
    # epoch 1 does not depend on --epochs, so growing a 1-epoch run to 2 must equal a 2-epoch run
    common = ["--batch-size", 3, "--lr", 0.02, "--seed", 7, "--keep-epochs", 0]
    straight, grown = tmp_path / "straight", tmp_path / "grown"
    assert train(runner, synth, "--out", straight, "--epochs", 2, *common).exit_code == 0
    r = train(runner, synth, "--out", grown, "--epochs", 1, *common)
    assert r.exit_code == 0, r.output
    assert [m["epoch"] for m in metrics(grown)] == [1]
    r = train(runner, synth, "--resume", grown, "--epochs", 2, *common)
    assert r.exit_code == 0, r.output
    assert f"resuming {grown} after epoch 1" in r.stderr and "epoch 2/2 (seg)" in r.stderr
    assert "epoch 1/2" not in r.stderr
    assert [m["epoch"] for m in metrics(grown)] == [1, 2]
    assert torch.load(grown / "last.pt", weights_only=True)["epoch"] == 2
    assert same(weights(grown / "last.pt"), weights(straight / "last.pt"))  # bit for bit
    assert [m["loss"] for m in metrics(grown)] == [m["loss"] for m in metrics(straight)]
    assert json.loads((grown / "config.json").read_text())["train"]["epochs"] == 2

    r = train(runner, synth, "--resume", grown, "--epochs", 2, *common)
    assert r.exit_code == 0 and f"{grown} already holds 2 epochs: nothing to train" in r.stderr
    r = train(runner, synth, "--resume", grown, "--out", grown, "--epochs", 2, *common)  # --out may repeat it
    assert r.exit_code == 0, r.output

    other = [*common[:2], "--lr", 0.03, *common[4:]]
    r = train(runner, synth, "--resume", grown, "--epochs", 3, *other)
    assert one_line_error(r) == (f"wsis: error: {grown}: was trained with --lr 0.02, not 0.03; --resume needs the "
                                 "same options (or --overwrite instead, to start afresh)")
    r = train(runner, synth, "--resume", grown, "--epochs", 3, *common, "--iou-head")
    assert "iou-head" in one_line_error(r)
    ds = json.loads((synth / "gt.json").read_text())
    ds["annotations"] = ds["annotations"][1:]
    write(tmp_path / "fewer.json", ds)
    r = runner.invoke(app, ["train", "maskrcnn", str(tmp_path / "fewer.json"), "--images", str(synth / "images"),
                            *TINY, "--resume", str(grown), "--epochs", "3", *map(str, common)])
    assert one_line_error(r) == (f"wsis: error: {grown}: was trained on another dataset (other images or "
                                 "annotations); --resume needs the same dataset")
    assert [m["epoch"] for m in metrics(grown)] == [1, 2]  # refused resumes leave the run alone


def test_resume_after_an_interrupt_is_exact(runner, synth, tmp_path, monkeypatch):
    import wsis_cli.cli.train as train_cli

    common = ["--epochs", 2, "--batch-size", 2, "--seed", 1, "--keep-epochs", 0, "--warmup-iters", 1]
    assert train(runner, synth, "--out", tmp_path / "whole", *common).exit_code == 0

    @contextlib.contextmanager
    def interrupting(*args, **kwargs):
        def progress(done, total):
            if done == 3:  # the first iteration of epoch 2 (of 2 per epoch)
                raise KeyboardInterrupt

        yield progress

    run = tmp_path / "parts"
    with monkeypatch.context() as m:
        m.setattr(train_cli, "progress_bar", interrupting)
        r = train(runner, synth, "--out", run, *common)
    assert r.exit_code == 130  # as Ctrl-C
    assert f"interrupted: {run} holds 1 of 2 epochs; rerun with --resume to continue" in r.stderr
    assert [m["epoch"] for m in metrics(run)] == [1]
    r = train(runner, synth, "--resume", run, *common)
    assert r.exit_code == 0, r.output
    assert [m["epoch"] for m in metrics(run)] == [1, 2]
    assert same(weights(run / "last.pt"), weights(tmp_path / "whole" / "last.pt"))
    assert same(weights(run / "best.pt"), weights(tmp_path / "whole" / "best.pt"))


def test_a_fresh_run_in_an_old_run_folder_leaves_nothing_of_the_old_one(runner, synth, tmp_path):
    run = tmp_path / "run"
    assert train(runner, synth, "--out", run, "--epochs", 3, "--batch-size", 3, "--keep-epochs", -1).exit_code == 0
    # without --resume the run is refused (and left whole); --overwrite starts afresh
    before = sorted(p.name for p in run.rglob("*"))
    r = train(runner, synth, "--out", run, "--epochs", 1, "--batch-size", 3, "--keep-epochs", 2)
    assert one_line_error(r) == (f"wsis: error: {run}: holds a training run already; add --resume to continue it, "
                                 "or --overwrite to start afresh (its checkpoints and metrics are deleted)")
    assert sorted(p.name for p in run.rglob("*")) == before
    (run / ".last.pt.123.tmp").write_bytes(b"")  # what a kill in the middle of a write leaves
    r = train(runner, synth, "--out", run, "--epochs", 1, "--batch-size", 3, "--keep-epochs", 2, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not list(run.glob(".*.tmp"))
    assert [m["epoch"] for m in metrics(run)] == [1]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in (run / "epochs").iterdir()) == ["epoch-001.pt"]


@pytest.mark.parametrize("args, hint", [
    (["--backbone", "vgg16"], "--backbone"),
    (["--iou-head", "--boxes-only"], "--iou-head"),
    (["--lr", "0"], "--lr"),
    (["--iou-lr", "-1"], "--iou-lr"),
    (["--iou-target", "cube"], "--iou-target"),
    (["--epochs", "0"], "--epochs"),
    (["--val-images", "IMAGES"], "--val-images"),
    (["--weights", "missing.pth"], "--weights"),
    (["--resume", "OTHER"], "--resume"),
    (["--device", "tpu"], "--device"),
])
def test_usage_errors(runner, synth, tmp_path, args, hint):
    sub = {"IMAGES": str(synth / "images"), "OTHER": str(tmp_path / "other"), "missing.pth": str(tmp_path / "m.pth")}
    r = train(runner, synth, "--out", tmp_path / "run", *[sub.get(a, a) for a in args])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for {hint}" in flat(r.output) and r.stdout == ""
    assert not (tmp_path / "run").exists()


def test_out_is_required_and_must_be_a_run_folder(runner, synth, tmp_path):
    r = train(runner, synth)
    assert r.exit_code == 2 and "Invalid value for --out: give the run folder" in flat(r.output)
    write(tmp_path / "file", {})
    r = train(runner, synth, "--out", tmp_path / "file")
    assert r.exit_code == 2 and "Invalid value for --out" in flat(r.output) and "is a file" in flat(r.output)
    (tmp_path / "busy").mkdir()
    write(tmp_path / "busy" / "notes.json", {})
    r = train(runner, synth, "--out", tmp_path / "busy", "--epochs", 1)
    assert one_line_error(r) == (f"wsis: error: {tmp_path / 'busy'}: exists and is not a wsis run folder; give a new "
                                 "or empty folder")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")
def test_cuda_without_a_gpu_is_a_usage_error(runner, synth, tmp_path):
    r = runner.invoke(app, ["train", "maskrcnn", str(synth / "gt.json"), "--images", str(synth / "images"),
                            "--out", str(tmp_path / "run"), "--device", "cuda", "--weights", "none"])
    assert r.exit_code == 2
    assert "no CUDA device is available" in flat(r.output)
    assert not (tmp_path / "run").exists()


def test_imagenet_weights_offline(runner, synth, tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    r = runner.invoke(app, ["train", "maskrcnn", str(synth / "gt.json"), "--images", str(synth / "images"),
                            "--out", str(tmp_path / "run"), "--backbone", "resnet18", "--weights", "imagenet",
                            "--min-size", "64", "--max-size", "64", "--epochs", "1", "--device", "cpu"])
    line = one_line_error(r)
    assert line.startswith("wsis: error: --weights imagenet: cannot fetch https://")
    assert "(URLError)" in line and "--weights none" in line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ----------------------------------------------------------------------------- --neck, the det label
def test_neck_efpn_end_to_end(runner, synth, tmp_path):
    from wsis_cli.engine.predictor import Predictor
    from wsis_cli.models.necks import EnhancedFPN

    run = tmp_path / "efpn"
    r = train(runner, synth, "--out", run, "--epochs", 1, "--keep-epochs", 0, "--batch-size", 3, "--neck", "efpn")
    assert r.exit_code == 0, r.output
    assert "training maskrcnn resnet18 efpn (weights: none) on 3 images" in r.stderr, r.stderr
    assert "epoch 1/1 (seg): loss " in r.stderr
    assert json.loads((run / "config.json").read_text())["model"]["neck"] == "efpn"
    assert metrics(run)[0]["loss"] > 0
    last = weights(run / "last.pt")
    for part in ("down", "short", "fuse"):  # the bottom-up and short paths are in the checkpoint
        assert any(k.startswith(f"backbone.fpn.{part}.") for k in last), part
    assert isinstance(Predictor.from_run(run).model.backbone.fpn, EnhancedFPN)
    # the neck is part of the model: resuming it as an FPN is refused
    r = train(runner, synth, "--resume", run, "--epochs", 2, "--keep-epochs", 0, "--batch-size", 3)
    assert one_line_error(r) == (f"wsis: error: {run}: was trained with --neck 'efpn', not 'fpn'; --resume needs the "
                                 "same options (or --overwrite instead, to start afresh)")
    r = train(runner, synth, "--out", tmp_path / "bad", "--neck", "panet")
    assert r.exit_code == 2 and "Invalid value for --neck: must be one of fpn, efpn" in flat(r.output)
    assert not (tmp_path / "bad").exists()


def test_box_only_epochs_are_called_detection_epochs(runner, synth, tmp_path):
    # a Faster R-CNN trains no masks: its phase is det in the log, metrics.jsonl and last.pt
    common = ["--batch-size", 3, "--lr", 0.02, "--seed", 7, "--keep-epochs", 0, "--boxes-only"]
    straight = tmp_path / "straight"
    r = train(runner, synth, "--out", straight, "--epochs", 2, *common, labels="box.json")
    assert r.exit_code == 0, r.output
    assert "epoch 1/2 (det): loss " in r.stderr and "epoch 2/2 (det): loss " in r.stderr
    assert "(seg)" not in r.stderr
    assert [m["phase"] for m in metrics(straight)] == ["det", "det"]
    last = torch.load(straight / "last.pt", weights_only=True)
    assert last["phase"] == "det" and [h["phase"] for h in last["history"]] == ["det", "det"]
    # a box-only run from before the label (its last.pt says seg) resumes exactly: the optimiser
    # state (SGD momentum) is picked up, so growing it to 2 epochs gives the straight run's weights
    old = tmp_path / "old"
    assert train(runner, synth, "--out", old, "--epochs", 1, *common, labels="box.json").exit_code == 0
    state = torch.load(old / "last.pt", weights_only=True)
    state["phase"] = "seg"
    torch.save(state, old / "last.pt")
    r = train(runner, synth, "--resume", old, "--epochs", 2, *common, labels="box.json")
    assert r.exit_code == 0, r.output
    assert same(weights(old / "last.pt"), weights(straight / "last.pt"))


def test_epochs_help_names_both_kinds_of_training(runner):
    r = runner.invoke(app, ["train", "maskrcnn", "--help"])
    assert r.exit_code == 0
    text = flat(r.output)
    assert "Segmentation epochs." not in text and "detection (boxes) with --boxes-only" in text
    assert "--neck" in text and "its extra layers start random" in text


# ----------------------------------------------------------------------------- --box-loss, ignore regions, empty masks
def test_box_loss_boxinst_trains_a_mask_rcnn_on_boxes_alone(runner, synth, tmp_path):
    from wsis_cli.engine.predictor import Predictor

    run = tmp_path / "boxinst"
    r = train(runner, synth, "--out", run, "--epochs", 1, "--keep-epochs", 0, "--batch-size", 3,
              "--box-loss", "boxinst", labels="box.json")
    assert r.exit_code == 0, r.output
    assert "training maskrcnn resnet18" in r.stderr
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["architecture"] == "maskrcnn" and model["box_loss"] == "boxinst"
    losses = metrics(run)[0]["losses"]
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_projection", "loss_pairwise",
                           "loss_objectness", "loss_rpn_box_reg"}
    assert losses["loss_mask"] == 0.0 and losses["loss_projection"] > 0  # no mask anywhere: only the box terms
    state = weights(run / "best.pt")
    assert any("mask_head" in k for k in state) and int(state["roi_heads.boxinst_iter"]) == 1
    assert Predictor.from_run(run).has_masks
    for args, hint in ((["--box-loss", "boxes"], "must be one of none, boxinst"),
                       (["--box-loss", "boxinst", "--boxes-only"], "it trains the mask head; --boxes-only has none")):
        r = train(runner, synth, "--out", tmp_path / "bad", *args, labels="box.json")
        assert r.exit_code == 2 and f"Invalid value for --box-loss: {hint}" in flat(r.output), r.output
    assert not (tmp_path / "bad").exists()


def test_a_run_from_before_neck_box_loss_and_only_invalid_resumes_with_their_defaults(runner, synth, tmp_path):
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

    from wsis_cli.engine.predictor import Predictor

    run = tmp_path / "old"
    common = ["--batch-size", 3, "--keep-epochs", 0]
    assert train(runner, synth, "--out", run, "--epochs", 1, *common).exit_code == 0
    added = {"model": {"neck": "fpn", "box_loss": "none"}, "train": {"only_invalid": False}}
    config = json.loads((run / "config.json").read_text())
    for part, keys in added.items():  # what config.json and the checkpoints held before these options
        for key, value in keys.items():
            assert config[part].pop(key) == value
    write(run / "config.json", config)
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)
        del state["config"]["neck"], state["config"]["box_loss"], state["train"]["only_invalid"]
        torch.save(state, run / name)
    model = Predictor.from_run(run).model
    assert type(model.backbone.fpn) is FeaturePyramidNetwork and model.roi_heads.box_loss == "none"
    r = train(runner, synth, "--resume", run, "--epochs", 2, *common)
    assert r.exit_code == 0, r.output
    assert f"resuming {run} after epoch 1" in r.stderr and [m["epoch"] for m in metrics(run)] == [1, 2]
    # the defaults it was given are its options now: another --box-loss is refused
    r = train(runner, synth, "--resume", run, "--epochs", 3, *common, "--box-loss", "boxinst")
    assert one_line_error(r) == (f"wsis: error: {run}: was trained with --box-loss 'none', not 'boxinst'; --resume "
                                 "needs the same options (or --overwrite instead, to start afresh)")


def test_only_invalid_ignores_the_valid_and_empty_masks_are_reported(runner, synth, tmp_path):
    import numpy as np

    from wsis_cli.coco import mask_to_rle

    ds = json.loads((synth / "gt.json").read_text())
    anns = ds["annotations"]
    for k, a in enumerate(anns):
        a["wsis"] = {"method": "grabcut", "valid": k % 2 == 0}
    n_valid = sum(a["wsis"]["valid"] for a in anns)
    im = ds["images"][0]
    empty = dict(anns[0], id=max(a["id"] for a in anns) + 1, image_id=im["id"],
                 segmentation=mask_to_rle(np.zeros((im["height"], im["width"]), bool)))
    del empty["wsis"]  # not a GrabCut pseudo-label: --only-invalid keeps it
    anns.append(empty)
    write(tmp_path / "flags.json", ds)
    r = train(runner, tmp_path, "--out", tmp_path / "small", "--epochs", 1, "--keep-epochs", 0, "--batch-size", 3,
              "--only-invalid", "--images", synth / "images", labels="flags.json")
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())
    assert (f"--only-invalid: {n_valid} annotations with wsis.valid true are ignore regions (no loss near them, not "
            "background)") in err
    assert "--only-invalid: kept 1 annotations without wsis.valid (not GrabCut pseudo-labels)" in err
    assert (f"warning: {tmp_path / 'flags.json'}: 1 annotations have an empty mask (0 pixels; the first: annotation "
            f"{empty['id']} (image {im['id']})); they train as box-only annotations, not as empty masks") in err
    assert json.loads((tmp_path / "small" / "config.json").read_text())["train"]["only_invalid"] is True
    # --only-valid and --only-invalid: one line, and no run folder
    r = train(runner, tmp_path, "--out", tmp_path / "both", "--only-valid", "--only-invalid", "--images",
              synth / "images", labels="flags.json")
    assert one_line_error(r) == ("wsis: error: --only-valid and --only-invalid exclude each other (the large branch "
                                 "trains on valid masks, the small one on the invalid ones); give one")
    assert not (tmp_path / "both").exists()
