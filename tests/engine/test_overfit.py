"""Model quality, the one slow module (``-m slow``; CI runs it once): a tiny Mask R-CNN trained
through the CLI until it fits its few synthetic training images (mAP@0.5 >= 0.8 on them), its IoU
head predicts mask quality better than the mean does, and what the verbs make with it is good:
`wsis predict` results, `pseudolabel net`'s pseudo-labels, the hybrid fusion's large instances.

The CLI tests (tests/cli/test_predict.py, test_score_iou.py, test_pseudolabel_net.py) check the
same verbs' contract on a toy model trained for one epoch (``toy_detector`` in conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY, synth_detector_data, train_detector
from wsis_cli.cli.app import app
from wsis_cli.coco import load_dataset, rle_to_mask
from wsis_cli.engine.predictor import Predictor
from wsis_cli.iou_scores import oracle_scores
from wsis_cli.metrics.coco_eval import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SMALL_AREA = 64 * 64

# 80 epochs of segmentation and 20 of the IoU branch on 4 images of 128x128 px (two torch threads)
DETECTOR_TRAIN = ["--backbone", "resnet18", "--weights", "none", "--epochs", "80", "--batch-size", "4",
                  "--lr", "0.03", "--warmup-iters", "10", "--min-size", "128", "--max-size", "128",
                  "--fpn-channels", "64", "--head-channels", "256", "--no-scale-jitter", "--keep-epochs", "0",
                  "--iou-head", "--iou-epochs", "20", "--iou-lr", "0.003", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def fitted_detector(one_torch_thread, tmp_path_factory) -> dict:
    """``{"data", "gt", "images", "run"}``: the tiny Mask R-CNN with an IoU head, fitted to the 4
    images of ``data``."""
    root = tmp_path_factory.mktemp("fitted")
    data = synth_detector_data(root)
    return {**data, "run": train_detector(data, root / "run", DETECTOR_TRAIN, threads=2)}


@pytest.fixture(scope="module")
def fitted(fitted_detector):
    ds = load_dataset(fitted_detector["gt"])
    results = Predictor.from_run(fitted_detector["run"], "cpu").predict_images(ds.images, fitted_detector["images"],
                                                                               dataset=ds)
    return ds, results


def wsis(*args) -> str:
    r = CliRunner().invoke(app, [*map(str, args)])
    assert r.exit_code == 0, r.output
    return r.stdout


def evaluated(gt, pred) -> dict:
    return json.loads(wsis("evaluate", gt, pred, "--json"))


def test_a_tiny_model_overfits_a_few_synthetic_images(fitted):
    ds, results = fitted
    assert len(ds.images) == 4 and len(ds.annotations) >= 10
    scores = evaluate(ds, results, iou_thrs=(0.5,))
    assert scores["iou_type"] == "segm"
    assert scores["mAP"]["0.5"] >= 0.8


def test_the_iou_head_beats_predicting_the_mean(fitted):
    ds, results = fitted
    kept = [r for r in results if r["score"] >= 0.3]  # the detections a user would keep
    oracle = oracle_scores(ds, kept)
    real = {inst["index"]: inst["iou"] for im in oracle["images"] for inst in im["instances"]}
    truth = np.array([real[i] for i in range(len(kept))])
    predicted = np.array([r["iou"] for r in kept])
    assert len(kept) >= 10 and truth.std() > 0.05  # a spread of good and bad masks to tell apart
    mae_head = np.abs(predicted - truth).mean()
    mae_mean = np.abs(truth.mean() - truth).mean()
    assert mae_head < mae_mean


def test_predict_results_evaluate_well(fitted_detector, tmp_path):
    """(Was tests/cli/test_predict.py's quality half.) `wsis predict` then `wsis evaluate`."""
    det = fitted_detector
    out = tmp_path / "pred.json"
    wsis("predict", det["run"], "--images", det["images"], "--dataset", det["gt"], "--device", "cpu", "--out", out)
    results = json.loads(out.read_text())
    got = evaluated(det["gt"], out)
    assert got["iou_type"] == "segm" and got["counts"]["predictions"] == len(results)
    assert got["mAP"]["0.5"] >= 0.4  # measured: 0.915
    assert got["ABO"] > 0.5  # measured: 0.75
    # confident detections, and doubtful ones (--score-thr 0.5 keeps some and drops some)
    assert any(x["score"] >= 0.5 for x in results) and any(x["score"] < 0.5 for x in results)


def test_pseudo_labels_are_good(fitted_detector, tmp_path):
    """(Was tests/cli/test_pseudolabel_net.py's quality half.) `pseudolabel net` on IL+C and box
    labels of the training images: every instance has a mask, and they score well."""
    det = fitted_detector
    for level, bar in (("ilc", 0.3), ("box", 0.7)):  # measured: 0.86 and 1.0
        labels, out = tmp_path / f"{level}.json", tmp_path / f"{level}_net.json"
        wsis("data", "weaken", det["gt"], "--to", level, "--out", labels)
        wsis("pseudolabel", "net", labels, "--images", det["images"], "--model", det["run"], "--device", "cpu",
             "--out", out)
        ds = load_dataset(out)
        assert ds.annotations and all(rle_to_mask(ds.rle(a)).any() for a in ds.annotations), level
        got = evaluated(det["gt"], out)["mAP"]["0.5"]
        assert got > bar if level == "ilc" else got >= bar, (level, got)


def test_fusion_takes_the_large_instances_from_the_mask_model(fitted_detector, tmp_path):
    """(The part of tests/cli/test_predict.py::test_small_branch_fusion that the toy model, whose
    detections are all small, cannot exercise.)"""
    det = fitted_detector
    wsis("data", "weaken", det["gt"], "--to", "box", "--out", tmp_path / "box.json")
    wsis("train", "maskrcnn", tmp_path / "box.json", "--images", det["images"], "--out", tmp_path / "small",
         "--boxes-only", *TINY)
    common = ["predict", det["run"], "--images", det["images"], "--dataset", det["gt"], "--device", "cpu"]
    plain = json.loads(wsis(*common))
    fused = json.loads(wsis(*common, "--small-branch", tmp_path / "small"))

    def key(x):
        return x["image_id"], x["category_id"], tuple(x["bbox"]), x["score"]

    large = [key(x) for x in plain if x["bbox"][2] * x["bbox"][3] >= SMALL_AREA + 1]
    assert large  # the set has one object over 64x64 px, which the fitted model finds
    assert [key(x) for x in fused if x["bbox"][2] * x["bbox"][3] >= SMALL_AREA + 1] == large
