import math

import numpy as np
import pytest

from conftest import ann, make_dataset, rect_mask
from wsis_cli.coco import mask_to_rle, parse_dataset, parse_results
from wsis_cli.errors import InputError, WsisError
from wsis_cli.iou_scores import compare_scores, match_ious, oracle_scores, parse_iou_scores
from wsis_cli.selection import parse_scores

H = W = 20


def gt_dataset() -> dict:
    """Image 1: two class-1 squares side by side, a class-2 bar below, a class-1 crowd strip over
    the bar. Image 2: one small class-1 square. Image 3: one class-2 square, nothing predicted."""
    crowd = ann(4, 1, rect_mask(H, W, 0, 15, 20, 20), 1)
    crowd["iscrowd"] = 1
    return make_dataset([(1, H, W), (2, H, W), (3, H, W)], [
        ann(1, 1, rect_mask(H, W, 0, 0, 10, 10), 1),
        ann(2, 1, rect_mask(H, W, 10, 0, 20, 10), 1),
        ann(3, 1, rect_mask(H, W, 0, 10, 20, 20), 2),
        crowd,
        ann(5, 2, rect_mask(H, W, 0, 0, 4, 4), 1),
        ann(6, 3, rect_mask(H, W, 5, 5, 15, 15), 2),
    ])


# (image, category, mask, real IoU after one-to-one matching)
PREDICTIONS = [
    (1, 1, rect_mask(H, W, 0, 0, 10, 10), 1.0),  # exactly GT 1
    (1, 1, rect_mask(H, W, 5, 0, 15, 10), 1 / 3),  # 1/3 with GT 1 and GT 2; GT 1 is taken: GT 2
    (1, 2, rect_mask(H, W, 0, 0, 10, 10), 0.0),  # GT 1's mask, but the wrong class
    (1, 2, rect_mask(H, W, 0, 10, 20, 20), 1.0),  # exactly GT 3
    (1, 1, rect_mask(H, W, 0, 15, 20, 20), 0.0),  # exactly the crowd region: matched by nothing
    (2, 1, rect_mask(H, W, 0, 0, 4, 2), 0.5),  # half of GT 5
]
IMAGE_SCORES = {1: (1 + 1 / 3 + 1) / 5, 2: 0.5, 3: None}


def results_list() -> list[dict]:
    return [{"image_id": i, "category_id": c, "segmentation": mask_to_rle(m), "score": 0.9}
            for i, c, m, _ in PREDICTIONS]


def pseudo_dataset(images=((1, H, W), (2, H, W), (3, H, W))) -> dict:
    anns = [ann(10 + k, i, m, c) for k, (i, c, m, _) in enumerate(PREDICTIONS)]
    return make_dataset(list(images), anns)


def test_match_ious_maximises_total_not_greedy():
    # greedy would give prediction 0 the 0.6 and leave prediction 1 with nothing (total 0.6)
    np.testing.assert_allclose(match_ious(np.array([[0.6, 0.5], [0.55, 0.0]])), [0.5, 0.55])


@pytest.mark.parametrize("iou, expected", [
    (np.zeros((0, 2)), []),  # no predictions
    (np.zeros((2, 0)), [0.0, 0.0]),  # no ground truth: all unmatched
    (np.array([[0.2, 0.7, 0.0], [0.0, 0.0, 0.4], [0.1, 0.0, 0.0]]), [0.7, 0.4, 0.1]),
    (np.array([[0.3, 0.9], [0.0, 0.0], [0.8, 0.0]]), [0.9, 0.0, 0.8]),  # more predictions than instances
])
def test_match_ious_cases(iou, expected):
    np.testing.assert_allclose(match_ious(iou), expected)


def test_match_ious_two_predictions_on_one_instance():
    assert sorted(match_ious(np.array([[1.0], [1.0]])).tolist()) == [0.0, 1.0]


def test_oracle_on_results_list():
    gt = parse_dataset(gt_dataset(), path="gt.json")
    rec = oracle_scores(gt, parse_results(results_list(), path="pred.json"), path="pred.json")
    assert [im["image_id"] for im in rec["images"]] == [1, 2, 3]  # every GT image
    by_id = {im["image_id"]: im for im in rec["images"]}
    for iid, score in IMAGE_SCORES.items():
        assert by_id[iid]["score"] == (None if score is None else round(score, 6))
    assert by_id[3]["instances"] == []
    got = [inst for im in rec["images"] for inst in im["instances"]]
    assert got == [{"index": k, "iou": round(p[3], 6)} for k, p in enumerate(PREDICTIONS)]


def test_oracle_on_pseudo_label_dataset_names_annotations():
    gt = parse_dataset(gt_dataset(), path="gt.json")
    obj = pseudo_dataset(images=[(2, H, W), (1, H, W)])  # its own images, in its own order
    del obj["annotations"][-1]  # image 2 keeps no pseudo-label
    crowd = ann(99, 1, rect_mask(H, W, 0, 0, 10, 10), 1)
    crowd["iscrowd"] = 1
    obj["annotations"].append(crowd)  # a crowd pseudo-label is not an instance
    rec = oracle_scores(gt, parse_dataset(obj, path="pseudo.json"), path="pseudo.json")
    assert [im["image_id"] for im in rec["images"]] == [2, 1]
    assert rec["images"][0] == {"image_id": 2, "score": None, "instances": []}
    assert rec["images"][1]["score"] == round(IMAGE_SCORES[1], 6)
    assert rec["images"][1]["instances"] == [{"annotation_id": 10 + k, "iou": round(p[3], 6)}
                                             for k, p in enumerate(PREDICTIONS[:5])]


def test_oracle_of_ground_truth_is_one():
    gt = parse_dataset(gt_dataset(), path="gt.json")
    rec = oracle_scores(gt, parse_dataset(gt_dataset(), path="gt.json"), path="gt.json")
    assert [im["score"] for im in rec["images"]] == [1.0, 1.0, 1.0]
    assert [i["annotation_id"] for im in rec["images"] for i in im["instances"]] == [1, 2, 3, 5, 6]


def test_oracle_polygon_prediction():
    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]
    gt = make_dataset([(1, H, W)], [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": square,
                                     "bbox": [2, 2, 10, 10]}])
    preds = [{"image_id": 1, "category_id": 1, "segmentation": square, "score": 1.0}]
    rec = oracle_scores(parse_dataset(gt), parse_results(preds), path="pred.json")
    assert rec["images"][0]["instances"] == [{"index": 0, "iou": 1.0}]


def test_oracle_reports_progress():
    calls = []
    oracle_scores(parse_dataset(gt_dataset()), results_list(), path="p", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def _fail(gt: dict, preds, match: str) -> None:
    with pytest.raises(InputError, match=match):
        p = parse_results(preds, path="pred.json") if isinstance(preds, list) else parse_dataset(preds, path="pred.json")
        oracle_scores(parse_dataset(gt, path="gt.json"), p, path="pred.json")


def test_oracle_errors():
    preds = results_list()
    _fail(gt_dataset(), [dict(preds[0], image_id=9)],
          r"^pred\.json: result 0 \(image 9\): 'image_id' names no image of the ground truth$")
    _fail(gt_dataset(), [dict(preds[0], category_id=7)], r"^pred\.json: result 0 \(image 1\): 'category_id' 7 names")
    small = mask_to_rle(rect_mask(10, 10, 0, 0, 5, 5))
    _fail(gt_dataset(), [preds[0], dict(preds[1], segmentation=small)],
          r"^pred\.json: result 1 \(image 1\): RLE size \[10, 10\] does not match")
    boxes = [{k: v for k, v in p.items() if k != "segmentation"} | {"bbox": [0, 0, 5, 5]} for p in preds]
    _fail(gt_dataset(), boxes, r"^pred\.json: result 0 \(image 1\): has no segmentation; score-iou needs predicted masks")
    obj = pseudo_dataset()
    obj["images"].append({"id": 8, "file_name": "8.png", "height": H, "width": W})
    _fail(gt_dataset(), obj, r"^pred\.json: image 8: names no image of the ground truth")
    obj = pseudo_dataset()
    obj["images"][0]["width"] = 30
    obj["annotations"] = []
    _fail(gt_dataset(), obj, r"^pred\.json: image 1: is 30x20 here but 20x20 in the ground truth")
    gt = gt_dataset()
    del gt["annotations"][4]["segmentation"]  # annotation 5, a box only
    _fail(gt, preds, r"^gt\.json: annotation 5 \(image 2\): has no mask; --gt needs")
    gt = gt_dataset()
    del gt["annotations"][3]["segmentation"]  # the crowd region needs no mask: it is never matched
    oracle_scores(parse_dataset(gt), preds, path="pred.json")


def scores_obj(images) -> dict:
    return {"info": {"wsis": {"verb": "score-iou"}}, "images": images}


def test_parse_iou_scores_and_select_reader_accept_the_output():
    rec = oracle_scores(parse_dataset(gt_dataset()), results_list(), path="p")
    rec = {"info": {"wsis": {"version": "x", "verb": "score-iou", "options": {}, "seed": None}}, **rec}
    s = parse_iou_scores(rec, path="s.json")
    assert s.images.image_ids.tolist() == [1, 2, 3]
    assert math.isnan(s.images.scores[2])
    assert s.instances[("index", 1)] == (1, round(1 / 3, 6))
    assert len(s.instances) == 6
    assert parse_scores(rec, path="s.json").image_ids.tolist() == [1, 2, 3]
    only_images = parse_iou_scores({"images": [{"image_id": 1, "score": 0.5}]})
    assert only_images.instances == {}


@pytest.mark.parametrize("images, message", [
    ([{"image_id": 1, "score": 0.5, "instances": {}}], "image 1: 'instances' must be a list"),
    ([{"image_id": 1, "score": 0.5, "instances": [3]}], r"image 1, instances\[0\]: must be an object"),
    ([{"image_id": 1, "score": 0.5, "instances": [{"iou": 0.5}]}],
     r"image 1, instances\[0\]: needs exactly one of 'annotation_id' or 'index'"),
    ([{"image_id": 1, "score": 0.5, "instances": [{"index": 1, "annotation_id": 1, "iou": 0.5}]}],
     r"image 1, instances\[0\]: needs exactly one"),
    ([{"image_id": 1, "score": 0.5, "instances": [{"index": -1, "iou": 0.5}]}],
     r"image 1, instances\[0\]: 'index' must be a non-negative integer"),
    ([{"image_id": 1, "score": 0.5, "instances": [{"annotation_id": "7", "iou": 0.5}]}],
     r"image 1, instances\[0\]: 'annotation_id' must be an integer"),
    ([{"image_id": 1, "score": 0.5, "instances": [{"index": 0, "iou": None}]}],
     "image 1, index 0: 'iou' must be a finite number"),
    ([{"image_id": 1, "score": 0.5, "instances": [{"index": 0, "iou": 0.5}, {"annotation_id": 3, "iou": 0.5}]}],
     "image 1, annotation id 3: instances must all carry"),
    ([{"image_id": 1, "score": 0.5, "instances": [{"index": 0, "iou": 0.5}]},
      {"image_id": 2, "score": 0.5, "instances": [{"index": 0, "iou": 0.5}]}], "image 2, index 0: duplicate index"),
    ([{"image_id": 1, "score": "high"}], "image 1: 'score' must be a finite number or null"),
])
def test_parse_iou_scores_errors(images, message):
    with pytest.raises(InputError, match=f"^s.json: {message}"):
        parse_iou_scores(scores_obj(images), path="s.json")


def test_compare_scores_exact():
    oracle = parse_iou_scores(scores_obj([
        {"image_id": 1, "score": 0.4, "instances": [{"index": 0, "iou": 0.2}, {"index": 1, "iou": 0.6}]},
        {"image_id": 2, "score": 0.8, "instances": [{"index": 2, "iou": 0.8}]},
        {"image_id": 3, "score": None, "instances": []},
        {"image_id": 4, "score": 0.3, "instances": []},
    ]), path="oracle.json")
    predicted = parse_iou_scores(scores_obj([
        {"image_id": 1, "score": 0.5, "instances": [{"index": 0, "iou": 0.5}, {"index": 1, "iou": 0.5}]},
        {"image_id": 2, "score": 0.6, "instances": [{"index": 2, "iou": 0.6}, {"index": 9, "iou": 0.1}]},
        {"image_id": 3, "score": 0.7},  # the oracle has no score: not compared
        {"image_id": 5, "score": 0.1},  # not in the oracle: not compared
    ]), path="pred.json")
    got = compare_scores(predicted, oracle)
    assert got["n_images"] == 2 and got["n_instances"] == 3
    assert got["mae_image"] == pytest.approx((0.1 + 0.2) / 2)
    assert got["mae_mean_baseline"] == pytest.approx(0.2)  # mean 0.6 over images 1 and 2
    assert got["mae_instance"] == pytest.approx((0.3 + 0.1 + 0.2) / 3)
    assert compare_scores(oracle, oracle) == {"n_images": 3, "mae_image": 0.0,
                                              "mae_mean_baseline": pytest.approx(0.2),  # mean 0.5 of 0.4, 0.8, 0.3
                                              "n_instances": 3, "mae_instance": 0.0}


def test_compare_scores_nothing_in_common():
    a = parse_iou_scores(scores_obj([{"image_id": 1, "score": 0.5, "instances": [{"index": 0, "iou": 0.5}]}]))
    b = parse_iou_scores(scores_obj([{"image_id": 2, "score": 0.5, "instances": [{"annotation_id": 0, "iou": 0.5}]}]))
    with pytest.raises(WsisError, match="has no image in common with"):
        compare_scores(a, b)  # nothing compared is an error, not "compared 0"
    both_null = parse_iou_scores(scores_obj([{"image_id": 2, "score": None, "instances": []}]))
    b_null = parse_iou_scores(scores_obj([{"image_id": 2, "score": None, "instances": []}]))
    assert compare_scores(both_null, b_null) == {"n_images": 0, "mae_image": None, "mae_mean_baseline": None,
                                                 "n_instances": 0, "mae_instance": None}


def test_compare_scores_rejects_instances_in_different_images():
    a = parse_iou_scores(scores_obj([{"image_id": 1, "score": 0.5, "instances": [{"index": 0, "iou": 0.5}]}]),
                         path="a.json")
    b = parse_iou_scores(scores_obj([{"image_id": 1, "score": None, "instances": []},
                                     {"image_id": 2, "score": 0.5, "instances": [{"index": 0, "iou": 0.5}]}]),
                         path="b.json")
    with pytest.raises(WsisError, match="a.json: index 0 is in image 1 but in image 2 in b.json"):
        compare_scores(a, b)
