import copy
import json

import numpy as np
import pytest
from conftest import ann, make_dataset, rect_mask
from perturb import perturbed_predictions

from wsis_cli.coco import fill_areas, load_dataset, mask_to_rle, parse_dataset, rle_to_mask
from wsis_cli.errors import InputError
from wsis_cli.metrics import evaluate, mask_iou

ONE = pytest.approx(1.0, abs=1e-12)


def results_from(ds_obj, keep=None, score=1.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": score} for a in ds_obj["annotations"] if keep is None or a["id"] in keep]


def run(gt_obj, preds, **kw):
    gt = parse_dataset(copy.deepcopy(gt_obj), path="gt.json")
    fill_areas(gt)
    return evaluate(gt, preds, pred_path="pred.json", **kw)


def test_perfect(two_images):
    r = run(two_images, results_from(two_images), per_class=True)
    # pycocotools divides by tp + fp + eps, so "1" is 1 - 2e-16
    assert r["mAP"] == {"0.25": ONE, "0.5": ONE, "0.75": ONE}
    assert r["AP"] == ONE and r["ABO"] == 1.0
    assert r["AP_S"] == ONE and r["AP_L"] is None  # every object is under 64x64
    assert [c["AP50"] for c in r["per_class"]] == [ONE, ONE]


def test_no_predictions(two_images):
    r = run(two_images, [])
    assert r["mAP"] == {"0.25": 0.0, "0.5": 0.0, "0.75": 0.0}
    assert r["AP"] == 0.0 and r["ABO"] == 0.0


def test_one_miss_is_51_of_101(two_images):
    # class 1 has two instances (annotations 1 and 3); we find 3 only: recall 0.5 at precision 1,
    # so 51 of COCO's 101 recall points are at precision 1. Class 2 (annotation 2) is missed.
    r = run(two_images, results_from(two_images, keep={3}), per_class=True)
    assert r["per_class"][0]["AP50"] == pytest.approx(51 / 101)
    assert r["per_class"][1]["AP50"] == 0.0
    assert r["mAP"]["0.5"] == pytest.approx(51 / 101 / 2)
    assert r["ABO"] == pytest.approx(1 / 3)


def test_partial_overlap_counts_by_threshold():
    gt = make_dataset([(1, 30, 30)], [ann(1, 1, rect_mask(30, 30, 5, 5, 16, 16))], n_cats=1)  # 11x11
    pred = [{"image_id": 1, "category_id": 1, "score": 0.9,
             "segmentation": mask_to_rle(rect_mask(30, 30, 5, 5, 16, 13))}]  # 11x8: IoU 88/121
    r = run(gt, pred)
    assert r["mAP"] == {"0.25": ONE, "0.5": ONE, "0.75": 0.0}
    assert r["AP"] == pytest.approx(0.5)  # matched at 0.50, 0.55, 0.60, 0.65, 0.70 of ten thresholds
    assert r["ABO"] == pytest.approx(88 / 121)


def test_crowd_region_is_neither_hit_nor_false_positive():
    m, crowd = rect_mask(30, 30, 0, 0, 10, 10), rect_mask(30, 30, 15, 15, 30, 30)
    gt = make_dataset([(1, 30, 30)], [ann(1, 1, m), ann(2, 1, crowd, iscrowd=1)], n_cats=1)
    preds = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": mask_to_rle(m)},
             {"image_id": 1, "category_id": 1, "score": 0.95, "segmentation": mask_to_rle(crowd)}]
    r = run(gt, preds)
    assert r["mAP"]["0.5"] == ONE
    assert r["ABO"] == 1.0  # over the one non-crowd instance
    assert r["counts"] == {"images": 1, "gt_instances": 1, "gt_crowd": 1, "predictions": 2}


@pytest.mark.parametrize("large_side,large_is_small", [(64, False), (None, True)])
def test_small_large_split_at_4096(large_side, large_is_small):
    big = rect_mask(100, 100, 0, 0, 64, 64)
    if large_side is None:
        big[0, 0] = False  # 4095 px: small
    small = rect_mask(100, 100, 80, 80, 90, 90)
    gt = make_dataset([(1, 100, 100)], [ann(1, 1, big), ann(2, 1, small)], n_cats=1)
    r = run(gt, results_from(gt, keep={1}))
    if large_is_small:
        assert r["AP_L"] is None
        assert r["AP_S"] == pytest.approx(51 / 101)
    else:
        assert r["AP_L"] == ONE and r["AP_S"] == 0.0
    r = run(gt, results_from(gt, keep={2}))
    assert r["AP_S"] == (pytest.approx(51 / 101) if large_is_small else ONE)


def test_box_predictions(two_images):
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in two_images["annotations"]]
    r = run(two_images, preds)
    assert r["iou_type"] == "bbox" and r["mAP"]["0.5"] == ONE and r["ABO"] is None
    preds[0].update(bbox=[30, 30, 5, 5], score=0.5)  # moved off its object, ranked after the hit
    assert run(two_images, preds)["mAP"]["0.5"] == pytest.approx((51 / 101 + 1) / 2)


def test_dataset_as_predictions_scores_one_unless_given(two_images):
    pseudo = copy.deepcopy(two_images)
    r = run(two_images, parse_dataset(pseudo, path="pseudo.json"))
    assert r["mAP"]["0.5"] == ONE
    # a confident wrong mask first, a right one second: only scores decide the ranking
    wrong = copy.deepcopy(pseudo["annotations"][2])
    wrong.update(id=9, segmentation=mask_to_rle(rect_mask(40, 40, 0, 30, 10, 40)), score=0.99)
    pseudo["annotations"][2]["score"] = 0.5
    pseudo["annotations"].append(wrong)
    r = run(two_images, parse_dataset(pseudo, path="pseudo.json"), per_class=True)
    # class 1, ranked: annotation 1 (score 1.0, hit), the wrong mask (0.99, miss), annotation 3
    # (0.5, hit): precision 1 up to recall 0.5, then 2/3 at recall 1 -> (51 * 1 + 50 * 2/3) / 101
    assert r["per_class"][0]["AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert r["per_class"][1]["AP50"] == ONE


@pytest.mark.parametrize("change,msg", [
    (lambda p: p[0].update(image_id=7), r"pred.json: result 0 \(image 7\): 'image_id' names no image"),
    (lambda p: p[0].update(category_id=5), r"result 0 \(image 1\): 'category_id' 5 names no category"),
    (lambda p: p[1].pop("segmentation") and p[1].update(bbox=[0, 0, 1, 1]), r"result 1 .*all masks or all boxes"),
    (lambda p: p[0].update(segmentation={"size": [5, 5], "counts": "abc"}), r"result 0 .*does not match"),
])
def test_bad_predictions(two_images, change, msg):
    preds = results_from(two_images)
    change(preds)
    with pytest.raises(InputError, match=msg):
        run(two_images, preds)


def test_box_only_ground_truth_cannot_score_masks(two_images):
    gt = copy.deepcopy(two_images)
    gt["annotations"][1]["segmentation"] = []
    with pytest.raises(InputError, match=r"gt.json: annotation 2 \(image 1\): has no mask"):
        run(gt, results_from(two_images))


# ------------------------------------------------------------------------------- real data
def pycocotools_stats(gt_file, preds):
    """Bare pycocotools on the same files: COCOeval.stats (AP, AP50, AP75, ...) and the GT COCO."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(gt_file))
        ev = COCOeval(cg, cg.loadRes(copy.deepcopy(preds)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats, cg


@pytest.mark.shared
def test_matches_pycocotools_on_coco_mini(coco_mini):
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    gt = load_dataset(coco_mini / "instances_val.json")
    fill_areas(gt)
    preds = perturbed_predictions(gt)
    ours = evaluate(gt, preds, iou_thrs=[0.5, 0.75], per_class=True)

    stats, cg = pycocotools_stats(coco_mini / "instances_val.json", preds)
    assert ours["AP"] == pytest.approx(stats[0], abs=1e-12)
    assert ours["mAP"]["0.5"] == pytest.approx(stats[1], abs=1e-12)
    assert ours["mAP"]["0.75"] == pytest.approx(stats[2], abs=1e-12)
    assert 0.2 < ours["AP"] < 0.9  # the perturbation must leave something to measure

    # AP_S / AP_L: the same COCOeval with the 64x64 split as its area ranges
    with contextlib.redirect_stdout(io.StringIO()):
        ev2 = COCOeval(cg, cg.loadRes(copy.deepcopy(preds)), "segm")
        ev2.params.areaRng = [[0, 1e10], [0, 4096 - 1e-9], [4096, 1e10]]
        ev2.params.areaRngLbl = ["all", "small", "large"]
        ev2.evaluate()
        ev2.accumulate()
    p = ev2.eval["precision"][:, :, :, :, -1]
    assert ours["AP_S"] == pytest.approx(p[..., 1][p[..., 1] > -1].mean(), abs=1e-12)
    assert ours["AP_L"] == pytest.approx(p[..., 2][p[..., 2] > -1].mean(), abs=1e-12)

    # per-class AP@0.5 averages to mAP@0.5 over classes with ground truth
    per = [c["AP50"] for c in ours["per_class"] if c["AP50"] is not None]
    assert np.mean(per) == pytest.approx(ours["mAP"]["0.5"])

    # ABO, independently with numpy masks
    best = []
    for im in gt.images:
        gts = [a for a in gt.anns_by_image[im["id"]] if not a["iscrowd"]]
        dts = [rle_to_mask(p["segmentation"]) for p in preds if p["image_id"] == im["id"]]
        for a in gts:
            g = rle_to_mask(gt.rle(a))[None]
            best.append(mask_iou(np.stack(dts), g).max() if dts else 0.0)
    assert ours["ABO"] == pytest.approx(np.mean(best), abs=1e-6)


def test_matches_pycocotools_on_synthetic_data(tmp_path):
    """The same cross-check as on COCO, on data the test makes, so it runs everywhere."""


    from wsis_cli.synth import synthesize

    (tmp_path / "gt.json").write_text(json.dumps(synthesize(tmp_path, n=12, size=128, seed=3)))
    gt = load_dataset(tmp_path / "gt.json")
    preds = perturbed_predictions(gt, seed=1, max_kernel=3)
    ours = evaluate(gt, preds, iou_thrs=[0.5, 0.75])
    stats, _ = pycocotools_stats(tmp_path / "gt.json", preds)
    assert 0.1 < ours["AP"] < 0.95
    assert ours["AP"] == pytest.approx(stats[0], abs=1e-12)
    assert ours["mAP"]["0.5"] == pytest.approx(stats[1], abs=1e-12)
    assert ours["mAP"]["0.75"] == pytest.approx(stats[2], abs=1e-12)
