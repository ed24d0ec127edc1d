import copy
import json
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from conftest import ann, make_dataset, rect_mask
from perturb import perturbed_predictions

from wsis_cli.coco import fill_areas, load_dataset, mask_to_rle, parse_dataset, rle_string_counts, rle_to_mask
from wsis_cli.errors import InputError, WsisError
from wsis_cli.metrics import ENGINES, default_engine, evaluate, mask_iou
from wsis_cli.metrics.coco_eval import _rle_strings_ok

ONE = pytest.approx(1.0, abs=1e-12)


def _has_faster() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


# every test that takes `engine` runs on both: faster-coco-eval (the default) and pycocotools
# (the reference, and the fallback)
ENGINE_PARAMS = [
    pytest.param("faster-coco-eval", marks=pytest.mark.skipif(not _has_faster(), reason="faster-coco-eval absent")),
    "pycocotools",
]


@pytest.fixture(params=ENGINE_PARAMS)
def engine(request) -> str:
    return request.param


def results_from(ds_obj, keep=None, score=1.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": score} for a in ds_obj["annotations"] if keep is None or a["id"] in keep]


def run(gt_obj, preds, **kw):
    gt = parse_dataset(copy.deepcopy(gt_obj), path="gt.json")
    fill_areas(gt)
    return evaluate(gt, preds, pred_path="pred.json", **kw)


def test_perfect(two_images, engine):
    r = run(two_images, results_from(two_images), per_class=True, engine=engine)
    # pycocotools divides by tp + fp + eps, so "1" is 1 - 2e-16
    assert r["mAP"] == {"0.25": ONE, "0.5": ONE, "0.75": ONE}
    assert r["AP"] == ONE and r["ABO"] == 1.0
    assert r["AP_S"] == ONE and r["AP_L"] is None  # every object is under 64x64
    assert [c["AP50"] for c in r["per_class"]] == [ONE, ONE]


def test_no_predictions(two_images, engine):
    r = run(two_images, [], engine=engine)
    assert r["mAP"] == {"0.25": 0.0, "0.5": 0.0, "0.75": 0.0}
    assert r["AP"] == 0.0 and r["ABO"] == 0.0


def test_one_miss_is_51_of_101(two_images, engine):
    # class 1 has two instances (annotations 1 and 3); we find 3 only: recall 0.5 at precision 1,
    # so 51 of COCO's 101 recall points are at precision 1. Class 2 (annotation 2) is missed.
    r = run(two_images, results_from(two_images, keep={3}), per_class=True, engine=engine)
    assert r["per_class"][0]["AP50"] == pytest.approx(51 / 101)
    assert r["per_class"][1]["AP50"] == 0.0
    assert r["mAP"]["0.5"] == pytest.approx(51 / 101 / 2)
    assert r["ABO"] == pytest.approx(1 / 3)


def test_partial_overlap_counts_by_threshold(engine):
    gt = make_dataset([(1, 30, 30)], [ann(1, 1, rect_mask(30, 30, 5, 5, 16, 16))], n_cats=1)  # 11x11
    pred = [{"image_id": 1, "category_id": 1, "score": 0.9,
             "segmentation": mask_to_rle(rect_mask(30, 30, 5, 5, 16, 13))}]  # 11x8: IoU 88/121
    r = run(gt, pred, engine=engine)
    assert r["mAP"] == {"0.25": ONE, "0.5": ONE, "0.75": 0.0}
    assert r["AP"] == pytest.approx(0.5)  # matched at 0.50, 0.55, 0.60, 0.65, 0.70 of ten thresholds
    assert r["ABO"] == pytest.approx(88 / 121)


def test_crowd_region_is_neither_hit_nor_false_positive(engine):
    m, crowd = rect_mask(30, 30, 0, 0, 10, 10), rect_mask(30, 30, 15, 15, 30, 30)
    gt = make_dataset([(1, 30, 30)], [ann(1, 1, m), ann(2, 1, crowd, iscrowd=1)], n_cats=1)
    preds = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": mask_to_rle(m)},
             {"image_id": 1, "category_id": 1, "score": 0.95, "segmentation": mask_to_rle(crowd)}]
    r = run(gt, preds, engine=engine)
    assert r["mAP"]["0.5"] == ONE
    assert r["ABO"] == 1.0  # over the one non-crowd instance
    assert r["counts"] == {"images": 1, "gt_instances": 1, "gt_crowd": 1, "predictions": 2}


@pytest.mark.parametrize("large_side,large_is_small", [(64, False), (None, True)])
def test_small_large_split_at_4096(large_side, large_is_small, engine):
    big = rect_mask(100, 100, 0, 0, 64, 64)
    if large_side is None:
        big[0, 0] = False  # 4095 px: small
    small = rect_mask(100, 100, 80, 80, 90, 90)
    gt = make_dataset([(1, 100, 100)], [ann(1, 1, big), ann(2, 1, small)], n_cats=1)
    r = run(gt, results_from(gt, keep={1}), engine=engine)
    if large_is_small:
        assert r["AP_L"] is None
        assert r["AP_S"] == pytest.approx(51 / 101)
    else:
        assert r["AP_L"] == ONE and r["AP_S"] == 0.0
    r = run(gt, results_from(gt, keep={2}), engine=engine)
    assert r["AP_S"] == (pytest.approx(51 / 101) if large_is_small else ONE)


def test_box_predictions(two_images, engine):
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in two_images["annotations"]]
    r = run(two_images, preds, engine=engine)
    assert r["iou_type"] == "bbox" and r["mAP"]["0.5"] == ONE and r["ABO"] is None
    preds[0].update(bbox=[30, 30, 5, 5], score=0.5)  # moved off its object, ranked after the hit
    assert run(two_images, preds, engine=engine)["mAP"]["0.5"] == pytest.approx((51 / 101 + 1) / 2)


def test_dataset_as_predictions_scores_one_unless_given(two_images, engine):
    pseudo = copy.deepcopy(two_images)
    r = run(two_images, parse_dataset(pseudo, path="pseudo.json"), engine=engine)
    assert r["mAP"]["0.5"] == ONE
    # a confident wrong mask first, a right one second: only scores decide the ranking
    wrong = copy.deepcopy(pseudo["annotations"][2])
    wrong.update(id=9, segmentation=mask_to_rle(rect_mask(40, 40, 0, 30, 10, 40)), score=0.99)
    pseudo["annotations"][2]["score"] = 0.5
    pseudo["annotations"].append(wrong)
    r = run(two_images, parse_dataset(pseudo, path="pseudo.json"), per_class=True, engine=engine)
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


def test_annotation_id_zero_is_an_ordinary_id(two_images, engine):
    # COCOeval keeps the matched ground-truth id per detection, 0 meaning "no match"
    gt = copy.deepcopy(two_images)
    gt["annotations"][0]["id"] = 0
    r = run(gt, results_from(two_images), engine=engine)
    assert r["mAP"]["0.5"] == ONE and r["AP"] == ONE


def test_box_only_ground_truth_cannot_score_masks(two_images):
    gt = copy.deepcopy(two_images)
    gt["annotations"][1]["segmentation"] = []
    with pytest.raises(InputError, match=r"gt.json: annotation 2 \(image 1\): has no mask"):
        run(gt, results_from(two_images))


# ------------------------------------------------------------------------------- engines
def test_engine_is_checked_and_defaults_to_faster_coco_eval(two_images):
    assert default_engine() == ("faster-coco-eval" if _has_faster() else "pycocotools")
    assert set(ENGINES) == {"faster-coco-eval", "pycocotools"}
    with pytest.raises(WsisError, match="unknown evaluation engine 'coco'"):
        run(two_images, results_from(two_images), engine="coco")


def test_falls_back_to_pycocotools_without_faster_coco_eval(two_images, monkeypatch):
    preds = results_from(two_images, keep={1, 3})
    expected = run(two_images, preds, per_class=True, engine="pycocotools")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # `import faster_coco_eval` fails
    assert default_engine() == "pycocotools"
    assert run(two_images, preds, per_class=True) == expected
    with pytest.raises(ImportError):
        run(two_images, preds, engine="faster-coco-eval")


def assert_same_record(a, b, tol=1e-12):
    """Two evaluate() records: the same keys, numbers within ``tol``, None where the other is."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, (a, b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_record(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_record(x, y, tol)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=tol)
    else:
        assert a == b


@pytest.mark.skipif(not _has_faster(), reason="faster-coco-eval absent")
def test_engines_agree_on_every_key(tmp_path):
    from wsis_cli.synth import synthesize

    (tmp_path / "gt.json").write_text(json.dumps(synthesize(tmp_path, n=12, size=128, seed=4)))
    gt = load_dataset(tmp_path / "gt.json")
    preds = perturbed_predictions(gt, seed=2, max_kernel=3)
    preds += [dict(p, score=p["score"] / 2) for p in preds[::2]]  # duplicates: false positives
    first = [p for p in preds if p["image_id"] == preds[0]["image_id"]]
    variants = {
        "scores": preds,
        "ties": [dict(p, score=1.0) for p in preds],  # pseudo-labels: the file's order decides
        "over 100 in an image": preds + [dict(p, score=i / 1000) for i, p in enumerate(first * (101 // len(first) + 1))],
    }
    kw = dict(iou_thrs=[0.25, 0.5, 0.75, 0.9], per_class=True)
    for name, pr in variants.items():
        fast, ref = evaluate(gt, pr, engine="faster-coco-eval", **kw), evaluate(gt, pr, engine="pycocotools", **kw)
        assert 0.1 < ref["AP"] < 0.95 and ref["AP_S"] is not None, name
        assert_same_record(fast, ref)


# --------------------------------------------------------------------- the vectorised RLE check
def encode_runs(runs):
    """pycocotools' compressed RLE string of a list of run lengths (negative ones included)."""
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def exact_ok(counts: str, size: int) -> bool:
    runs = rle_string_counts(counts)
    return runs is not None and all(r >= 0 for r in runs) and sum(runs) == size


@given(st.lists(st.one_of(
    st.lists(st.integers(-3, 2**36), min_size=1, max_size=9).map(lambda r: (encode_runs(r), sum(r))),
    st.tuples(st.text(st.characters(min_codepoint=40, max_codepoint=120), min_size=1, max_size=14),
              st.integers(0, 200)),
), min_size=1, max_size=6))
def test_rle_string_check_agrees_with_the_exact_decoder(cases):
    # run lengths beyond 2**39 (numbers of 9+ characters) are left to the exact check
    got = _rle_strings_ok([c for c, _ in cases], [s for _, s in cases])
    for (counts, size), ok in zip(cases, got.tolist()):
        assert ok == exact_ok(counts, size), (counts, size)


def test_rle_string_check_on_real_masks_and_odd_strings():
    rng = np.random.default_rng(0)
    masks = [rng.random((30, 40)) < p for p in (0.0, 0.05, 0.5, 0.95, 1.0)] + [rect_mask(30, 40, 3, 4, 20, 25)]
    counts = [mask_to_rle(m)["counts"] for m in masks]
    assert _rle_strings_ok(counts, [1200] * len(counts)).all()
    assert not _rle_strings_ok(counts, [1199] * len(counts)).any()  # wrong size
    odd = ["0é1", "0" + "\x7f" + "1", "0?", "`" * 10 + "0", encode_runs([5, 2**45, 7])]
    assert not _rle_strings_ok(odd, [1] * len(odd)).any()
    assert _rle_strings_ok([], []).shape == (0,)


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
@pytest.mark.parametrize("bad,msg", [
    ({"counts": "0[2"}, r"result 1 \(image 1\): compressed RLE counts sum to 75, expected height\*width = 1600"),
    ({"counts": "0[a"}, r"result 1 \(image 1\): compressed RLE 'counts' is not a valid RLE string"),
    ({"counts": "0é"}, r"result 1 \(image 1\): compressed RLE 'counts' is not a valid RLE string"),
    ({"size": [40, 41]}, r"result 1 \(image 1\): RLE size \[40, 41\] does not match"),
    ({"counts": ""}, r"result 1 \(image 1\): RLE 'counts' must be a non-empty string"),
])
def test_mask_faults_name_the_first_bad_result(two_images, engine, bad, msg):
    preds = results_from(two_images)
    preds[1]["segmentation"] = dict(preds[1]["segmentation"], **bad)
    preds[2]["image_id"] = 9  # a later fault: the first one in the file is reported
    with pytest.raises(InputError, match="^pred.json: " + msg):
        run(two_images, preds, engine=engine)
    preds[0]["category_id"] = 7  # an earlier one wins
    with pytest.raises(InputError, match=r"^pred.json: result 0 \(image 1\): 'category_id' 7"):
        run(two_images, preds, engine=engine)


# ------------------------------------------------------------------------------- real data
def pycocotools_reference(gt_file, preds):
    """Bare pycocotools on the same files: COCOeval.stats (AP, AP50, AP75, ...), and from a second
    run with IoU 0.25 added and the 64x64 split as area ranges, mAP@0.25, AP_S, AP_L and the
    per-class AP@0.5."""
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
        ev2 = COCOeval(cg, cg.loadRes(copy.deepcopy(preds)), "segm")
        ev2.params.iouThrs = np.concatenate(([0.25], ev2.params.iouThrs))
        ev2.params.areaRng = [[0, 1e10], [0, 4096 - 1e-9], [4096, 1e10]]
        ev2.params.areaRngLbl = ["all", "small", "large"]
        ev2.evaluate()
        ev2.accumulate()

    def mean(x):
        return x[x > -1].mean() if (x > -1).any() else None

    p = ev2.eval["precision"][..., -1]  # [T, R, K, A]
    return {"AP": ev.stats[0], "0.5": ev.stats[1], "0.75": ev.stats[2], "0.25": mean(p[0, :, :, 0]),
            "AP_S": mean(p[1:, :, :, 1]), "AP_L": mean(p[1:, :, :, 2]),
            "per_class": [mean(p[1, :, k, 0]) for k in range(p.shape[2])]}


def assert_matches_reference(ours, ref, tol=1e-12):
    def near(v):
        return None if v is None else pytest.approx(v, abs=tol)

    assert [ours["AP"], ours["mAP"]["0.25"], ours["mAP"]["0.5"], ours["mAP"]["0.75"], ours["AP_S"], ours["AP_L"]] \
        == [near(ref[k]) for k in ("AP", "0.25", "0.5", "0.75", "AP_S", "AP_L")]
    assert [c["AP50"] for c in ours["per_class"]] == [near(v) for v in ref["per_class"]]


@pytest.mark.shared
def test_matches_pycocotools_on_coco_mini(coco_mini, engine):
    gt = load_dataset(coco_mini / "instances_val.json")
    fill_areas(gt)
    preds = perturbed_predictions(gt)
    ours = evaluate(gt, preds, iou_thrs=[0.25, 0.5, 0.75], per_class=True, engine=engine)
    assert 0.2 < ours["AP"] < 0.9  # the perturbation must leave something to measure
    assert_matches_reference(ours, pycocotools_reference(coco_mini / "instances_val.json", preds))

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


def test_matches_pycocotools_on_synthetic_data(tmp_path, engine):
    """The same cross-check as on COCO, on data the test makes, so it runs everywhere."""
    from wsis_cli.synth import synthesize

    (tmp_path / "gt.json").write_text(json.dumps(synthesize(tmp_path, n=12, size=128, seed=3)))
    gt = load_dataset(tmp_path / "gt.json")
    preds = perturbed_predictions(gt, seed=1, max_kernel=3)
    ours = evaluate(gt, preds, iou_thrs=[0.25, 0.5, 0.75], per_class=True, engine=engine)
    assert 0.1 < ours["AP"] < 0.95
    assert_matches_reference(ours, pycocotools_reference(tmp_path / "gt.json", preds))
