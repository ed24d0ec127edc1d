import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from wsis_cli.coco import Dataset, parse_dataset
from wsis_cli.engine import classifier as engine
from wsis_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from wsis_cli.engine.classifier import (SCALES, ClassifierConfig, TrainImages, batch_plan, image_labels, image_tensor,
                                        load_classifier, train_classifier)
from wsis_cli.engine.device import resolve_device
from wsis_cli.errors import InputError, WsisError
from wsis_cli.models.backbones import build_resnet
from wsis_cli.models.classifier import build_classifier, peak_mask, peak_stimulation
from wsis_cli.synth import synthesize
from wsis_cli.weaken import weaken

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(backbone="resnet18", weights="none", size=64, batch_size=4, lr=0.01, seed=3)


@pytest.fixture(scope="module")
def synth6(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth6")
    return weaken(parse_dataset(synthesize(root, n=6, size=64, seed=1)), "ilc"), root / "images"


# ----------------------------------------------------------------------------- peaks
def test_peak_mask_and_stimulation_on_a_hand_made_map():
    crm = torch.zeros(1, 1, 4, 4)
    crm[0, 0, 1, 1] = 5.0
    crm[0, 0, 2, 3] = 3.0
    peaks = peak_mask(crm)
    assert peaks.dtype == torch.bool and peaks.shape == (1, 1, 4, 4)
    assert sorted(map(tuple, peaks[0, 0].nonzero().tolist())) == [(1, 1), (2, 3)]
    crm.requires_grad_(True)
    score = peak_stimulation(crm)
    assert score.shape == (1, 1) and score.item() == pytest.approx(4.0)  # mean of the two peaks
    score.sum().backward()
    expect = torch.zeros(4, 4)
    expect[1, 1] = expect[2, 3] = 0.5
    assert torch.equal(crm.grad[0, 0], expect)  # the gradient reaches the peaks only


def test_peaks_of_a_plateau_negative_values_and_a_constant_map():
    crm = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]],      # a plateau: both tied maxima are peaks
                         [[-3.0, -1.0], [-2.0, -4.0]],  # all negative: one peak, above the median
                         [[2.0, 2.0], [2.0, 2.0]]]])     # constant: nothing above the median
    peaks = peak_mask(crm)
    assert peaks[0, 0].tolist() == [[True, True], [False, False]]
    assert peaks[0, 1].tolist() == [[False, True], [False, False]]
    assert not peaks[0, 2].any()
    crm.requires_grad_(True)
    scores = peak_stimulation(crm)
    assert scores.tolist() == [[1.0, -1.0, 2.0]]  # a constant map scores its mean
    scores[0, 2].backward()
    assert torch.allclose(crm.grad[0, 2], torch.full((2, 2), 0.25))


def test_peak_kernel_widens_the_window():
    crm = torch.zeros(1, 1, 1, 7)
    crm[0, 0, 0, 1], crm[0, 0, 0, 3] = 2.0, 1.0
    assert peak_mask(crm, 3)[0, 0, 0].nonzero().flatten().tolist() == [1, 3]
    assert peak_mask(crm, 5)[0, 0, 0].nonzero().flatten().tolist() == [1]  # 3 is in 1's 5-window


# ----------------------------------------------------------------------------- images, labels, augmentation
def test_image_tensor():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    rgb[..., 2] = 51
    x = image_tensor(rgb, 8)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(8, 8)) and torch.allclose(x[1], torch.zeros(8, 8))
    assert torch.allclose(x[2], torch.full((8, 8), 0.2))
    same = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    assert torch.equal(image_tensor(same, 2), torch.from_numpy(same).permute(2, 0, 1).float() / 255)
    big = np.full((64, 32, 3), 200, dtype=np.uint8)
    assert torch.allclose(image_tensor(big, 16), torch.full((3, 16, 16), 200 / 255))


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
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]
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
    assert said[1] == "training resnet18 (weights: none) on 6 images, 4 classes, on cpu: 2 iterations per epoch"
    assert said[2].startswith("epoch 1/1: loss ")
    assert summary["iterations"] == 2 and summary["resumed_from"] is None
    ck = torch.load(out, map_location="cpu", weights_only=True)
    assert ck["format"] == "wsis-classifier" and ck["version"] == 1 and ck["epoch"] == 1
    assert ck["config"] == {"backbone": "resnet18", "num_classes": 4, "category_ids": [1, 2, 3, 4],
                            "category_names": ["disc", "box", "triangle", "star"], "size": 64, "peak_kernel": 3}
    assert ck["train"]["weights"] == "none" and ck["train"]["batch_size"] == 4 and ck["scaler"] is None
    assert set(ck["history"][0]) == {"epoch", "loss", "accuracy", "seconds"}
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
    with pytest.raises(WsisError, match=r"c.pt: was trained with --lr 0.01, not 0.02; give the same options"):
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
    # without --resume, the file is overwritten from the start
    train_classifier(ds, images, ClassifierConfig(epochs=1, **TINY), out=out)
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
    (bad / ds.images[3]["file_name"]).write_text("not a png")
    with pytest.raises(WsisError, match=f"not an image OpenCV can decode \\(image {ds.images[3]['id']} of "):
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
def test_weights_none_and_a_local_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = build_resnet("resnet18", weights=str(path))
    own = net.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    other = build_resnet("resnet18", weights="none")
    assert not torch.equal(other.conv1.weight, net.conv1.weight)
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)  # stride 16
    # a wsis-classifier checkpoint's backbone also serves as --weights
    torch.save({"model": {f"backbone.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "ck.pt")
    assert torch.equal(build_resnet("resnet18", weights=str(tmp_path / "ck.pt")).conv1.weight, ref.conv1.weight)


def test_wrong_weight_files(tmp_path):
    (tmp_path / "junk.pth").write_text("hello")
    with pytest.raises(WsisError, match="junk.pth: not a readable torch state dict"):
        build_resnet("resnet18", weights=str(tmp_path / "junk.pth"))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WsisError, match="r18.pth: .* has shape .*resnet50 needs"):
        build_resnet("resnet50", weights=str(tmp_path / "r18.pth"))
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "part.pth")
    with pytest.raises(WsisError, match="not resnet18 weights"):
        build_resnet("resnet18", weights=str(tmp_path / "part.pth"))
    with pytest.raises(WsisError, match="nowhere.pth: no such file"):
        build_resnet("resnet18", weights=str(tmp_path / "nowhere.pth"))
    with pytest.raises(WsisError, match="--backbone must be one of"):
        build_resnet("vgg16")


def test_imagenet_offline_is_a_clear_error(monkeypatch, tmp_path):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WsisError, match=r"--weights imagenet: cannot fetch https://\S+resnet18\S+ \(URLError\); "
                                        r"offline, use --weights none or a local file"):
        build_classifier(backbone="resnet18", num_classes=2, weights="imagenet")


def test_checkpoint_files(tmp_path):
    path = tmp_path / "sub" / "x.pt"
    save_checkpoint(path, {"format": "thing", "t": torch.arange(3), "n": None, "l": [1.5, "a", True]})
    obj = load_checkpoint(path, kind="thing")
    assert torch.equal(obj["t"], torch.arange(3)) and obj["l"] == [1.5, "a", True]
    with pytest.raises(WsisError, match=r"x.pt: not a wsis-classifier checkpoint \(it holds format 'thing'\)"):
        load_checkpoint(path, kind="wsis-classifier")
    with pytest.raises(WsisError, match="x.pt: not a wsis-classifier checkpoint"):
        load_classifier(path)
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01junk")
    with pytest.raises(WsisError, match=r"junk.pt: not a thing checkpoint \(cannot read it"):
        load_checkpoint(tmp_path / "junk.pt", kind="thing")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WsisError, match="list.pt: not a thing checkpoint .*a list without a 'format' key"):
        load_checkpoint(tmp_path / "list.pt", kind="thing")
    with pytest.raises(WsisError, match="none.pt: no such file"):
        load_checkpoint(tmp_path / "none.pt", kind="thing")
    with pytest.raises(WsisError, match="is a directory"):
        save_checkpoint(tmp_path, {"format": "thing"})


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(WsisError, match=f"{name} was asked for but no CUDA device is available"):
            resolve_device(name)
    for name in ("gpu", "cuda:x", ""):
        with pytest.raises(WsisError, match="is not a device; give auto, cpu, cuda or cuda:N"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("CUDA:0") == torch.device("cuda:0")
    with pytest.raises(WsisError, match="only 1 CUDA devices"):
        resolve_device("cuda:1")


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
    for im in ds.images:
        (bad / im["file_name"]).write_bytes(b"junk")
    with pytest.raises(WsisError, match=r"^\S+: not an image OpenCV can decode \(image \d+ of "):
        train_classifier(ds, bad, ClassifierConfig(epochs=1, workers=2, **TINY), out=tmp_path / "x.pt")


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
