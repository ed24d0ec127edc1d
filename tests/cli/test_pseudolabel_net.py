"""`wsis pseudolabel net` with the session's toy Mask R-CNN (``toy_detector``, one epoch: its
detections are near-random) on weak versions (IL+C, IL, boxes, a mix with full masks) of the images
it was trained on: which instances each label level keeps, their records, the errors. How good a
fitted model's pseudo-labels are: tests/engine/test_overfit.py (slow)."""

import json
from collections import Counter

import numpy as np
import pytest

from conftest import TINY, write
from wsis_cli.boxes import mask_to_box, xyxy_to_xywh
from wsis_cli.cli.app import app
from wsis_cli.coco import load_dataset, rle_to_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weak(one_torch_thread, toy_detector, tmp_path_factory):
    """``{"root", "ilc", "il", "box"}`` weak datasets of the detector's images, and ``"pred"``: its
    `wsis predict --dataset gt.json` results (the default --score-thr 0.05, as pseudolabel net)."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("net")
    runner = CliRunner()
    out = {"root": root}
    for level in ("ilc", "il", "box"):
        out[level] = root / f"{level}.json"
        r = runner.invoke(app, ["data", "weaken", str(toy_detector["gt"]), "--to", level, "--out", str(out[level])])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(toy_detector["run"]), "--images", str(toy_detector["images"]),
                            "--dataset", str(toy_detector["gt"]), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out["pred"] = json.loads(r.stdout)
    return out


def net(runner, det, labels, *args):
    return runner.invoke(app, ["pseudolabel", "net", str(labels), "--images", str(det["images"]), "--model",
                               str(det["run"]), "--device", "cpu", *map(str, args)])


def check_instances(ds, *, with_iou: bool = True) -> None:
    """Every made instance: a mask of the image's size that its area describes, a score, an iou.
    (A model may predict an empty mask, which is kept and counted: a fitted one's are all
    non-empty, which test_overfit checks.)"""
    assert [a["id"] for a in ds.annotations] == list(range(1, len(ds.annotations) + 1))
    for a in ds.annotations:
        m = rle_to_mask(ds.rle(a))
        assert m.shape == (128, 128) and a["area"] == m.sum()
        assert a["wsis"]["method"] == "net" and a["iscrowd"] == 0
        assert 0 < a["score"] <= 1
        if with_iou:
            assert 0 <= a["iou"] <= 1


def per_class(anns) -> Counter:
    return Counter((a["image_id"], a["category_id"]) for a in anns)


def test_ilc_keeps_the_k_best_detections(runner, toy_detector, weak, tmp_path):
    out = tmp_path / "ilc_net.json"
    r = net(runner, toy_detector, weak["ilc"], "--out", out)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    ds = load_dataset(out)
    labels = load_dataset(weak["ilc"])
    assert [im["id"] for im in ds.images] == [im["id"] for im in labels.images]
    assert ds.categories == labels.categories
    check_instances(ds)
    for a in ds.annotations:
        assert a["wsis"]["source"] == "ilc"
        m = rle_to_mask(ds.rle(a))
        if m.any():  # the bbox is the mask's (an empty mask keeps its detection's box)
            assert a["bbox"] == pytest.approx(xyxy_to_xywh(mask_to_box(m)[None])[0].tolist())
    counts, made = per_class(labels.annotations), per_class(ds.annotations)
    assert set(made) <= set(counts) and all(made[k] <= counts[k] for k in made)
    # the k best of the class's detections, by score (predict writes the same detections)
    pred = weak["pred"]
    for (image_id, cat), k in counts.items():
        want = [p["score"] for p in distinct(pred, image_id, cat, "score", k)]
        got = [a["score"] for a in ds.anns_by_image.get(image_id, []) if a["category_id"] == cat]
        assert got == pytest.approx(want, abs=1e-5)
    short = sum(counts.values()) - len(ds.annotations)
    line = f"{len(ds.annotations)} instances in 4 images (ilc {len(ds.annotations)})"
    assert line in r.stderr and (short == 0) == ("fewer detections than their counts" not in r.stderr)
    info = json.loads(out.read_text())["info"]["wsis"]
    assert info["verb"] == "pseudolabel net" and info["options"]["rank"] == "score"
    assert info["options"]["model"] == str(toy_detector["run"])

    # evaluate reads them (how well they score: test_overfit, slow), and they train a model
    r = runner.invoke(app, ["evaluate", str(toy_detector["gt"]), str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.stdout)["mAP"]["0.5"] <= 1
    r = runner.invoke(app, ["train", "maskrcnn", str(out), "--images", str(toy_detector["images"]),
                            "--out", str(tmp_path / "student"), *TINY])
    assert r.exit_code == 0, r.output
    assert "training maskrcnn resnet18 (weights: none) on 4 images" in r.stderr

    # the same inputs, the same bytes
    again = tmp_path / "again.json"
    assert net(runner, toy_detector, weak["ilc"], "--out", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_ilc_rank_by_predicted_iou(runner, toy_detector, weak, tmp_path):
    r = net(runner, toy_detector, weak["ilc"], "--rank", "iou", "--out", tmp_path / "by_iou.json")
    assert r.exit_code == 0, r.output
    ds = load_dataset(tmp_path / "by_iou.json")
    check_instances(ds)
    assert json.loads((tmp_path / "by_iou.json").read_text())["info"]["wsis"]["options"]["rank"] == "iou"
    counts = per_class(load_dataset(weak["ilc"]).annotations)
    pred = weak["pred"]
    for (image_id, cat), k in counts.items():
        want = [p["iou"] for p in distinct(pred, image_id, cat, "iou", k)]
        got = [a["iou"] for a in ds.anns_by_image.get(image_id, []) if a["category_id"] == cat]
        assert got == pytest.approx(want, abs=1e-5)
    # as many instances as by score (min of count and detections), maybe other ones
    assert net(runner, toy_detector, weak["ilc"], "--out", tmp_path / "by_score.json").exit_code == 0
    by_score = load_dataset(tmp_path / "by_score.json")
    assert per_class(ds.annotations) == per_class(by_score.annotations)


def distinct(pred: list[dict], image_id: int, cat: int, key: str, k: int | None) -> list[dict]:
    """The predictions of one image and class that `pseudolabel net` chooses, best by ``key`` first:
    going down, one whose mask overlaps a chosen one's by more than half of the smaller is passed
    over (a part of an object found whole, or one object twice), up to ``k``."""
    rows = sorted((p for p in pred if (p["image_id"], p["category_id"]) == (image_id, cat)),
                  key=lambda p: (-p[key], -p["score"]))
    chosen, masks = [], []
    for p in rows:
        if k is not None and len(chosen) >= k:
            break
        m = rle_to_mask(p["segmentation"])
        if any((m & c).sum() > 0.5 * max(min(m.sum(), c.sum()), 1) for c in masks):
            continue
        chosen.append(p)
        masks.append(m)
    return chosen


def test_il_keeps_the_detections_over_the_threshold(runner, toy_detector, weak, tmp_path):
    labelled = {(a["image_id"], a["category_id"]) for a in load_dataset(weak["il"]).annotations}
    scores = sorted(p["score"] for p in weak["pred"] if (p["image_id"], p["category_id"]) in labelled)
    thr = round(scores[len(scores) // 2], 4)  # about the median: whatever the model, some go, some stay
    assert scores[0] < thr <= scores[-1]
    r = net(runner, toy_detector, weak["il"], "--score-thr", thr, "--out", tmp_path / "il_net.json")
    assert r.exit_code == 0, r.output
    ds = load_dataset(tmp_path / "il_net.json")
    check_instances(ds)
    assert all(a["wsis"]["source"] == "il" and a["score"] >= thr for a in ds.annotations)
    want = sorted((p["image_id"], p["category_id"], p["score"]) for i, c in labelled
                  for p in distinct([q for q in weak["pred"] if q["score"] >= thr], i, c, "score", None))
    got = sorted((a["image_id"], a["category_id"], a["score"]) for a in ds.annotations)
    assert got == want and got
    assert f"{len(got)} instances in 4 images (il {len(got)})" in r.stderr


def test_box_labels_get_one_mask_each(runner, toy_detector, weak, tmp_path):
    r = net(runner, toy_detector, weak["box"], "--out", tmp_path / "box_net.json")
    assert r.exit_code == 0, r.output
    ds = load_dataset(tmp_path / "box_net.json")
    boxes = load_dataset(weak["box"])
    check_instances(ds)
    assert len(ds.annotations) == len(boxes.annotations)
    for a, b in zip(ds.annotations, boxes.annotations):
        assert a["wsis"] == {"method": "net", "source": "box", "ann_id": b["id"]}
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-6)  # the given box, not the mask's
        x, y, w, h = b["bbox"]
        ys, xs = np.nonzero(rle_to_mask(ds.rle(a)))  # the mask lies in its box (a pixel of slack)
        assert xs.min() >= x - 1 and ys.min() >= y - 1 and xs.max() < x + w + 1 and ys.max() < y + h + 1
    assert f"{len(ds.annotations)} instances in 4 images (box {len(ds.annotations)})" in r.stderr
    r = runner.invoke(app, ["evaluate", str(toy_detector["gt"]), str(tmp_path / "box_net.json"), "--json"])
    assert r.exit_code == 0 and 0 <= json.loads(r.stdout)["mAP"]["0.5"] <= 1  # how high: test_overfit


def test_mixed_levels_keep_the_full_masks(runner, toy_detector, weak, tmp_path):
    gt = json.loads(toy_detector["gt"].read_text())
    ilc = json.loads(weak["ilc"].read_text())
    full = [a for a in gt["annotations"] if a["image_id"] == 1]
    mixed = write(tmp_path / "mixed.json", {**ilc, "annotations": full + [a for a in ilc["annotations"]
                                                                          if a["image_id"] != 1]})
    r = net(runner, toy_detector, mixed, "--out", tmp_path / "mixed_net.json")
    assert r.exit_code == 0, r.output
    ds = load_dataset(tmp_path / "mixed_net.json")
    kept = ds.anns_by_image[1]
    assert len(kept) == len(full)
    for a, b in zip(kept, full):
        assert a["wsis"] == {"method": "net", "source": "full", "ann_id": b["id"]}
        assert {k: v for k, v in a.items() if k not in ("id", "wsis")} == {k: v for k, v in b.items() if k != "id"}
    assert {a["wsis"]["source"] for a in ds.annotations if a["image_id"] != 1} == {"ilc"}
    assert f"(full {len(full)}, ilc " in r.stderr


def test_errors(runner, toy_detector, toy_box_detector, toy_detector_without_iou_head, weak, tmp_path):
    ilc = json.loads(weak["ilc"].read_text())
    ilc["categories"].append({"id": 7, "name": "kite"})
    ilc["annotations"][0]["category_id"] = 7
    unknown = write(tmp_path / "unknown.json", ilc)
    out = tmp_path / "o.json"
    r = net(runner, toy_detector, unknown, "--out", out)
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.strip() == f"wsis: error: {unknown}: categories [7] are not among the model's [1, 2]"
    assert not out.exists()

    # a box-only model, and a mask model without an IoU head asked to rank by it
    root = weak["root"]
    boxes, no_iou = toy_box_detector["run"], toy_detector_without_iou_head
    r = net(runner, {**toy_detector, "run": boxes}, weak["ilc"])
    assert r.exit_code == 1 and r.stderr.strip() == (f"wsis: error: {boxes}: was trained with "
                                                     "--boxes-only; pseudo-labels need a mask model")
    r = net(runner, {**toy_detector, "run": no_iou}, weak["ilc"], "--rank", "iou")
    assert r.exit_code == 1 and r.stderr.strip() == (f"wsis: error: {no_iou}: has no IoU head (train "
                                                     "with --iou-head) to rank by predicted IoU; use --rank score")
    r = net(runner, {**toy_detector, "run": no_iou}, weak["ilc"], "--out", out)
    assert r.exit_code == 0, r.output  # ranking by score needs no IoU head; the instances have no iou
    assert all("iou" not in a and "score" in a for a in json.loads(out.read_text())["annotations"])

    (root / "imgs").mkdir(exist_ok=True)
    r = net(runner, {**toy_detector, "images": root / "imgs"}, weak["ilc"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "000001.png" in r.stderr
    r = net(runner, toy_detector, weak["ilc"], "--rank", "best")
    assert r.exit_code == 2 and "--rank" in r.output
