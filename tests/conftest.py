"""Shared fixtures: tiny datasets built in tmp_path, the CLI runner, ../shared/data when present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wsis_cli.coco import mask_to_rle

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config):
    """Under pytest-xdist each worker process gets its share of the cores for torch, not all of
    them (two processes with two threads each on two cores take many times longer)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "shared" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"{SHARED_DATA} is absent"))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    path = SHARED_DATA / "coco-mini"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def rect_mask(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def ann(id_: int, image_id: int, mask: np.ndarray, category_id: int = 1, **extra) -> dict:
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {"id": id_, "image_id": image_id, "category_id": category_id, "segmentation": mask_to_rle(mask),
            "area": float(mask.sum()), "bbox": bbox, "iscrowd": 0, **extra}


def make_dataset(images: list[tuple[int, int, int]], anns: list[dict], n_cats: int = 2) -> dict:
    """images: (id, height, width)."""
    return {
        "images": [{"id": i, "file_name": f"{i:06d}.png", "height": h, "width": w} for i, h, w in images],
        "annotations": anns,
        "categories": [{"id": k, "name": f"c{k}"} for k in range(1, n_cats + 1)],
    }


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def two_images() -> dict:
    """Two 40x40 images: image 1 holds a class-1 square and a class-2 bar, image 2 one class-1 square."""
    m1 = rect_mask(40, 40, 2, 2, 12, 12)
    m2 = rect_mask(40, 40, 20, 5, 38, 9)
    m3 = rect_mask(40, 40, 10, 10, 30, 30)
    return make_dataset([(1, 40, 40), (2, 40, 40)],
                        [ann(1, 1, m1, 1), ann(2, 1, m2, 2), ann(3, 2, m3, 1)])


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (use with ``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared 2-core machine two threads per process fight for the cores and a test takes many times
    longer; one thread keeps the runtime steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The toy Mask R-CNN that the CLI tests of predict, score-iou and pseudolabel net share: trained
# once per session through the CLI, for one epoch and one IoU epoch at toy sizes (a few seconds).
# It is no good (its detections are near-random), so those tests check the verbs' contract only;
# model quality is tests/engine/test_overfit.py's (marked slow), with a model fitted for longer.
TINY = ["--backbone", "resnet18", "--weights", "none", "--fpn-channels", "16", "--head-channels", "32",
        "--min-size", "64", "--max-size", "64", "--epochs", "1", "--batch-size", "4", "--keep-epochs", "0",
        "--device", "cpu"]
TOY_TRAIN = [*TINY, "--iou-head", "--iou-epochs", "1", "--seed", "0"]


def synth_detector_data(root: Path) -> dict:
    """``wsis data synth`` of 4 images of 128x128 px, 2 classes (14 objects, the smallest 9x9 px):
    ``{"data": folder, "gt": gt.json, "images": images/}``."""
    from wsis_cli.cli.app import app

    r = CliRunner().invoke(app, ["data", "synth", "--out", str(root / "data"), "--n", "4", "--size", "128",
                                 "--classes", "2", "--seed", "2"])
    assert r.exit_code == 0, r.output
    return {"data": root / "data", "gt": root / "data" / "gt.json", "images": root / "data" / "images"}


def train_detector(data: dict, run: Path, options: list[str], *, threads: int = 1) -> Path:
    """``wsis train maskrcnn`` on ``data``'s gt.json into ``run``, with ``threads`` torch threads."""
    import torch

    from wsis_cli.cli.app import app

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        r = CliRunner().invoke(app, ["train", "maskrcnn", str(data["gt"]), "--images", str(data["images"]),
                                     "--out", str(run), *options])
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture(scope="session")
def toy_detector(tmp_path_factory) -> dict:
    """``{"data": folder with gt.json and images/, "gt", "images", "run"}``: a toy Mask R-CNN with an
    IoU head, trained for one epoch on the 4 images of ``data`` (detections exist, good ones need not)."""
    root = tmp_path_factory.mktemp("detector")
    data = synth_detector_data(root)
    return {**data, "run": train_detector(data, root / "run", TOY_TRAIN)}


@pytest.fixture(scope="session")
def toy_box_detector(toy_detector, tmp_path_factory) -> dict:
    """``{"box": box.json (the boxes of toy_detector's gt.json), "run"}``: a box-only run
    (--boxes-only, the hybrid paper's small branch) trained for one toy epoch on them."""
    from wsis_cli.cli.app import app

    root = tmp_path_factory.mktemp("box_detector")
    r = CliRunner().invoke(app, ["data", "weaken", str(toy_detector["gt"]), "--to", "box", "--out",
                                 str(root / "box.json")])
    assert r.exit_code == 0, r.output
    run = train_detector({"gt": root / "box.json", "images": toy_detector["images"]}, root / "run",
                         [*TINY, "--boxes-only"])
    return {"box": root / "box.json", "run": run}


@pytest.fixture(scope="session")
def toy_detector_without_iou_head(toy_detector, tmp_path_factory) -> Path:
    """The run folder of a toy Mask R-CNN without an IoU head, trained like ``toy_detector``'s."""
    return train_detector(toy_detector, tmp_path_factory.mktemp("no_iou") / "run", TINY)


def tiny_config(**kw):
    """A small detector's model_config (ResNet-18, 96 px, narrow heads, 2 classes, random init)."""
    from wsis_cli.models.detector import model_config

    base = dict(backbone="resnet18", category_ids=[1, 2], category_names=["a", "b"], min_size=96, max_size=96,
                fpn_channels=32, head_channels=64, pretrained=False)
    base.update(kw)
    return model_config(**base)


def one_target(has_mask: bool):
    """A detection target of one 40x40 class-1 instance in a 96 px image, with or without its mask."""
    import torch

    masks = torch.zeros(1, 96, 96, dtype=torch.uint8)
    masks[0, 20:60, 30:70] = 1
    return {"boxes": torch.tensor([[30.0, 20.0, 70.0, 60.0]]), "labels": torch.tensor([1]), "masks": masks,
            "has_mask": torch.tensor([has_mask])}
