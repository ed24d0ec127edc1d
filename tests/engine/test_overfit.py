"""The tiny Mask R-CNN of the ``trained_detector`` fixture fits its few synthetic training images
(mAP@0.5 >= 0.8 on them), and its IoU head predicts mask quality better than the mean does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsis_cli.coco import load_dataset
from wsis_cli.engine.detector import load_run, predict_dataset
from wsis_cli.iou_scores import oracle_scores
from wsis_cli.metrics.coco_eval import evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(one_torch_thread, trained_detector):
    ds = load_dataset(trained_detector["gt"])
    model, config = load_run(trained_detector["run"])
    results = predict_dataset(model, config, ds, ds.images, trained_detector["images"], device=torch.device("cpu"))
    return ds, results


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
