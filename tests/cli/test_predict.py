"""`wsis predict` with the session's toy Mask R-CNN (``toy_detector``, one epoch: its detections
are near-random): the results list, `wsis evaluate` on it, folder numbering, --score-thr,
determinism, the hybrid fusion with a box-only small branch, and the errors. The quality of a
fitted model's results is tests/engine/test_overfit.py's (slow)."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY, write
from wsis_cli.boxes import box_iou, xywh_to_xyxy
from wsis_cli.cli.app import app
from wsis_cli.coco import rle_to_mask, segm_to_rle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_AREA = 64 * 64


def predict(runner, det, *args):
    return runner.invoke(app, ["predict", str(det["run"]), "--images", str(det["images"]), "--device", "cpu",
                               *map(str, args)])


@pytest.fixture(scope="module")
def plain(one_torch_thread, toy_detector, tmp_path_factory):
    """``predict --dataset gt.json`` at the default --score-thr: ``{"path", "results", "stderr"}``."""
    from typer.testing import CliRunner

    path = tmp_path_factory.mktemp("predict") / "pred.json"
    r = predict(CliRunner(), toy_detector, "--dataset", toy_detector["gt"], "--out", path)
    assert r.exit_code == 0, r.output
    return {"path": path, "results": json.loads(path.read_text()), "stderr": r.stderr}


@pytest.fixture
def small_run(toy_box_detector):
    """A box-only run (the hybrid paper's small branch) trained for one toy epoch on the boxes of
    the detector's images: it need not be good."""
    return toy_box_detector["run"]


def mask_of(result: dict, height: int = 128, width: int = 128) -> np.ndarray:
    return rle_to_mask(segm_to_rle(result["segmentation"], height, width))


def key(result: dict) -> tuple:
    """What identifies a detection, whichever file it is in (not its predicted IoU)."""
    return (result["image_id"], result["category_id"], tuple(result["bbox"]), result["score"],
            json.dumps(result.get("segmentation"), sort_keys=True))


def one_line_error(r) -> str:
    assert r.exit_code == 1, r.output
    assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("wsis: error: "), r.stderr
    return r.stderr.strip()


def test_results_on_a_dataset(runner, toy_detector, plain):
    results, gt = plain["results"], json.loads(toy_detector["gt"].read_text())
    assert results, "no detection at all"
    order = [im["id"] for im in gt["images"]]
    assert [r["image_id"] for r in results] == sorted((r["image_id"] for r in results), key=order.index)
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation", "iou"}
        assert r["category_id"] in (1, 2) and 0.05 <= r["score"] <= 1 and 0 <= r["iou"] <= 1
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 128.01 and y + h <= 128.01
        assert r["segmentation"]["size"] == [128, 128] and isinstance(r["segmentation"]["counts"], str)
        assert mask_of(r).shape == (128, 128)
    for image_id in order:  # best first within each image
        scores = [r["score"] for r in results if r["image_id"] == image_id]
        assert scores == sorted(scores, reverse=True)
    assert f"{len(results)} detections in 4 images of {toy_detector['gt']}" in plain["stderr"]

    r = runner.invoke(app, ["evaluate", str(toy_detector["gt"]), str(plain["path"]), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["iou_type"] == "segm" and got["counts"]["predictions"] == len(results)
    assert 0 <= got["mAP"]["0.5"] <= 1 and 0 <= got["ABO"] <= 1  # how high: test_overfit (slow)


def test_without_a_dataset_ids_follow_file_names(runner, toy_detector, plain, tmp_path):
    gt = json.loads(toy_detector["gt"].read_text())
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = {}
    for im in gt["images"]:  # the names sort in reverse id order
        names[im["id"]] = f"{chr(ord('a') + len(gt['images']) - im['id'])}.png"
        shutil.copy(toy_detector["images"] / im["file_name"], folder / names[im["id"]])
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    shutil.copy(toy_detector["images"] / gt["images"][0]["file_name"], folder / "sub" / "0.png")
    r = runner.invoke(app, ["predict", str(toy_detector["run"]), "--images", str(folder), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)  # '-' (the default) is stdout
    assert f"{len(results)} detections in 4 images (image ids 1..4 in file-name order of {folder})" in r.stderr
    by_name = sorted(names.values())
    for gt_id, name in names.items():
        new_id = by_name.index(name) + 1
        assert [{**x, "image_id": gt_id} for x in results if x["image_id"] == new_id] == \
            [x for x in plain["results"] if x["image_id"] == gt_id]


def test_score_threshold_filters(runner, toy_detector, plain, tmp_path):
    scores = sorted(x["score"] for x in plain["results"])
    thr = scores[len(scores) // 2]  # the median score: whatever the model, some go and some stay
    assert scores[0] < thr
    out = tmp_path / "high.json"
    r = predict(runner, toy_detector, "--dataset", toy_detector["gt"], "--score-thr", thr, "--out", out)
    assert r.exit_code == 0, r.output
    high = json.loads(out.read_text())
    assert high and all(x["score"] >= thr for x in high)
    assert len(high) < len(plain["results"])
    # a higher threshold drops the low scores and changes nothing else (the mask head runs on fewer
    # boxes, so its float sums may differ in the last bits: masks are compared by IoU)
    from pycocotools import mask as mask_utils

    want = [x for x in plain["results"] if x["score"] >= thr]
    strip = ("segmentation", "iou")
    assert [{k: v for k, v in x.items() if k not in strip} for x in high] == \
        [{k: v for k, v in x.items() if k not in strip} for x in want]
    for x, y in zip(high, want):
        assert x["iou"] == pytest.approx(y["iou"], abs=1e-3)
        assert mask_utils.iou([x["segmentation"]], [y["segmentation"]], [0])[0, 0] > 0.98


def test_same_inputs_same_bytes(runner, toy_detector, plain, tmp_path):
    out = tmp_path / "again.json"
    r = predict(runner, toy_detector, "--dataset", toy_detector["gt"], "--out", out)
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == plain["path"].read_bytes()


def test_small_branch_fusion(runner, toy_detector, plain, small_run, tmp_path):
    out = tmp_path / "fused.json"
    r = predict(runner, toy_detector, "--dataset", toy_detector["gt"], "--small-branch", small_run,
                "--out", out)
    assert r.exit_code == 0, r.output
    fused = json.loads(out.read_text())
    m = re.search(r"(\d+) detections in 4 images of .*; (\d+) from the small branch \((\d+) ellipses\)", r.stderr)
    assert m, r.stderr
    total, from_small, ellipses = map(int, m.groups())
    assert total == len(fused) and 0 < from_small <= total and ellipses <= from_small
    for x in fused:
        # GrabCut masks have no predicted IoU, so the fused list carries none
        assert set(x) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert mask_of(x).shape == (128, 128) and x["category_id"] in (1, 2)
    for image_id in {x["image_id"] for x in fused}:
        scores = [x["score"] for x in fused if x["image_id"] == image_id]
        assert scores == sorted(scores, reverse=True)

    def area(x):
        return x["bbox"][2] * x["bbox"][3]

    plain_keys = {key(x): x for x in plain["results"]}
    new = [x for x in fused if key(x) not in plain_keys]  # not the mask model's: the small branch's
    assert len(new) == from_small
    assert all(area(x) < SMALL_AREA + 1 for x in new)  # (+1: bbox rounding)
    # instances at or above 64x64 come from the mask model alone, all of them (the toy model's
    # detections may all be small: test_overfit holds a fitted model to this with large ones)
    large = [key(x) for x in plain["results"] if area(x) >= SMALL_AREA + 1]
    assert [key(x) for x in fused if area(x) >= SMALL_AREA + 1] == large
    # the small ones survived class-wise NMS over both branches (box IoU 0.5)
    small = [x for x in fused if area(x) < SMALL_AREA - 1]
    for image_id, cat in {(x["image_id"], x["category_id"]) for x in small}:
        boxes = xywh_to_xyxy([x["bbox"] for x in small if (x["image_id"], x["category_id"]) == (image_id, cat)])
        iou = box_iou(boxes, boxes)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= 0.5 + 1e-3
    r = runner.invoke(app, ["evaluate", str(toy_detector["gt"]), str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"]["predictions"] == len(fused)


def test_a_box_only_run_predicts_boxes(runner, toy_detector, small_run, tmp_path):
    out = tmp_path / "boxes.json"
    r = runner.invoke(app, ["predict", str(small_run), "--images", str(toy_detector["images"]), "--dataset",
                            str(toy_detector["gt"]), "--device", "cpu", "--score-thr", "0.3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    results = json.loads(out.read_text())
    assert results and all(set(x) == {"image_id", "category_id", "bbox", "score"} for x in results)
    r = runner.invoke(app, ["evaluate", str(toy_detector["gt"]), str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["iou_type"] == "bbox"


def test_small_branch_errors(runner, toy_detector, toy_box_detector, small_run, tmp_path):
    run = toy_detector["run"]
    r = predict(runner, toy_detector, "--small-branch", run, "--out", tmp_path / "o.json")
    assert one_line_error(r) == (f"wsis: error: {run}: the small branch must be a box-only detector "
                                 "(train maskrcnn --boxes-only)")
    r = runner.invoke(app, ["predict", str(small_run), "--images", str(toy_detector["images"]),
                            "--small-branch", str(small_run), "--device", "cpu", "--out", str(tmp_path / "o.json")])
    assert one_line_error(r) == (f"wsis: error: {small_run}: --small-branch fuses with a mask model, and this one "
                                 "was trained with --boxes-only")
    # a small branch of other categories
    box = json.loads(toy_box_detector["box"].read_text())
    for a in box["annotations"]:
        a["category_id"] = 3 if a["category_id"] == 2 else a["category_id"]
    box["categories"] = [{"id": 1, "name": "disc"}, {"id": 3, "name": "box"}]
    write(tmp_path / "box3.json", box)
    r = runner.invoke(app, ["train", "maskrcnn", str(tmp_path / "box3.json"), "--images",
                            str(toy_detector["images"]), "--out", str(tmp_path / "run3"), "--boxes-only", *TINY])
    assert r.exit_code == 0, r.output
    r = predict(runner, toy_detector, "--small-branch", tmp_path / "run3", "--out", tmp_path / "o.json")
    assert one_line_error(r) == (f"wsis: error: {tmp_path / 'run3'}: was trained on categories [1, 3], the mask "
                                 "model on [1, 2]; both branches need the same categories")
    assert not (tmp_path / "o.json").exists()


def test_input_errors(runner, toy_detector, tmp_path):
    gt = json.loads(toy_detector["gt"].read_text())
    gt["images"][1]["file_name"] = "gone.png"
    moved = write(tmp_path / "moved.json", gt)
    out = tmp_path / "o.json"
    r = predict(runner, toy_detector, "--dataset", moved, "--out", out)
    assert one_line_error(r) == (f"wsis: error: {toy_detector['images'] / 'gone.png'}: image file not found "
                                 f"(image {gt['images'][1]['id']} of {moved})")
    assert not out.exists()

    (tmp_path / "notarun").mkdir()
    r = runner.invoke(app, ["predict", str(tmp_path / "notarun"), "--images", str(toy_detector["images"]),
                            "--device", "cpu"])
    assert one_line_error(r) == f"wsis: error: {tmp_path / 'notarun'}: not a wsis training run (no best.pt or last.pt)"
    (tmp_path / "junk.pt").write_bytes(b"junk")
    r = runner.invoke(app, ["predict", str(tmp_path / "junk.pt"), "--images", str(toy_detector["images"]),
                            "--device", "cpu"])
    assert str(tmp_path / "junk.pt") in one_line_error(r)
    (tmp_path / "empty").mkdir()
    r = predict(runner, {**toy_detector, "images": tmp_path / "empty"})
    assert one_line_error(r).startswith(f"wsis: error: {tmp_path / 'empty'}: holds no image files")

    r = predict(runner, toy_detector, "--score-thr", 1.5)
    assert r.exit_code == 2 and "--score-thr" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "nothing"), "--images", str(toy_detector["images"])])
    assert r.exit_code == 2  # RUN must exist
    if not torch.cuda.is_available():
        r = runner.invoke(app, ["predict", str(toy_detector["run"]), "--images", str(toy_detector["images"]),
                                "--device", "cuda"])
        assert r.exit_code == 2 and "no CUDA device is available" in " ".join(r.output.replace("│", " ").split())


def test_small_branch_fusion_with_the_mask_head(runner, toy_detector, plain, small_run, tmp_path):
    """--fusion mask-head: the small branch's survivors get the mask model's own mask in their box
    (what `Predictor.masks_in_boxes` gives), never an ellipse; --small-area moves the split."""
    from wsis_cli.engine.predictor import Predictor
    from wsis_cli.images import read_image

    out = tmp_path / "fused.json"
    r = predict(runner, toy_detector, "--dataset", toy_detector["gt"], "--small-branch", small_run,
                "--fusion", "mask-head", "--small-area", 1e6, "--out", out)
    assert r.exit_code == 0, r.output
    m = re.search(r"; (\d+) from the small branch \((\d+) masks from the mask head\)", r.stderr)
    assert m and m.group(1) == m.group(2), r.stderr
    fused = json.loads(out.read_text())
    plain_keys = {key(x) for x in plain["results"]}
    new = [x for x in fused if key(x) not in plain_keys]
    assert len(new) == int(m.group(1)) > 0
    gt = json.loads(toy_detector["gt"].read_text())
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    model = Predictor.from_run(toy_detector["run"], "cpu")
    x = new[0]
    rgb = read_image(toy_detector["images"] / files[x["image_id"]])
    box = np.array(xywh_to_xyxy([x["bbox"]]), dtype=np.float32)
    head = model.masks_in_boxes(rgb, box, np.array([x["category_id"]]))
    # the RLE's bbox is rounded: compare masks on the written box, allowing its rounding
    assert (mask_of(x) ^ head.masks[0]).sum() <= 0.02 * 128 * 128


def test_fusion_options_go_with_a_small_branch(runner, toy_detector, small_run, tmp_path):
    r = predict(runner, toy_detector, "--fusion", "mask-head", "--out", tmp_path / "o.json")
    assert r.exit_code == 2 and "goes with --small-branch" in r.output
    r = predict(runner, toy_detector, "--small-branch", small_run, "--fusion", "best", "--out", tmp_path / "o.json")
    assert r.exit_code == 2 and "must be one of paper, mask-head, valid-or-head" in r.output
