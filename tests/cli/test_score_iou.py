import json

import pytest
import typer

from conftest import write
from test_iou_scores import IMAGE_SCORES, PREDICTIONS, gt_dataset, pseudo_dataset, results_list
from wsis_cli.cli.app import app as wsis_app
from wsis_cli.cli.score_iou import score_iou

app = typer.Typer()
app.command("score-iou")(score_iou)


@app.callback()
def _root() -> None:
    """A group, so that the verb is called by its name as under `wsis`."""


@pytest.fixture
def files(tmp_path):
    return {"gt": str(write(tmp_path / "gt.json", gt_dataset())),
            "results": str(write(tmp_path / "results.json", results_list())),
            "pseudo": str(write(tmp_path / "pseudo.json", pseudo_dataset())),
            "dir": tmp_path}


def test_oracle_from_results_to_stdout(runner, files):
    r = runner.invoke(app, ["score-iou", files["results"], "--gt", files["gt"]])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["info"]["wsis"]["verb"] == "score-iou"
    assert rec["info"]["wsis"]["options"]["gt"] == files["gt"]
    assert [(im["image_id"], im["score"]) for im in rec["images"]] == \
        [(i, None if s is None else round(s, 6)) for i, s in IMAGE_SCORES.items()]
    assert [i for im in rec["images"] for i in im["instances"]] == \
        [{"index": k, "iou": round(p[3], 6)} for k, p in enumerate(PREDICTIONS)]
    assert "scored 6 instances in 2 of 3 images" in r.stderr


def test_oracle_from_dataset_to_file_then_select(runner, files):
    out = files["dir"] / "scores.json"
    r = runner.invoke(app, ["score-iou", files["pseudo"], "--gt", files["gt"], "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    rec = json.loads(out.read_text())
    assert [i["annotation_id"] for im in rec["images"] for i in im["instances"]] == [10, 11, 12, 13, 14, 15]
    assert rec["images"][2] == {"image_id": 3, "score": None, "instances": []}
    # wsis select reads it: image 2 scores exactly 0.5, image 1 0.467, image 3 has no score
    r = runner.invoke(wsis_app, ["select", str(out), "--n", "2", "--beta", "0.5"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["image_ids"] == [2, 1]
    r = runner.invoke(wsis_app, ["select", str(out), "--n", "3"])
    assert r.exit_code == 1 and "only 2 are eligible" in r.stderr


def test_prediction_from_stdin(runner, files):
    text = open(files["results"]).read()
    r = runner.invoke(app, ["score-iou", "-", "--gt", files["gt"]], input=text)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"][1]["score"] == 0.5


def predicted_file(files) -> str:
    return str(write(files["dir"] / "predicted.json", {"images": [
        {"image_id": 1, "score": 0.5, "instances": [{"index": 0, "iou": 0.9}, {"index": 1, "iou": 0.5}]},
        {"image_id": 2, "score": 0.3, "instances": [{"index": 5, "iou": 0.5}, {"index": 7, "iou": 0.1}]},
        {"image_id": 3, "score": 0.4, "instances": []},
        {"image_id": 99, "score": 0.2},
    ]}))


def test_compare_json(runner, files):
    out = files["dir"] / "oracle.json"
    pred = predicted_file(files)
    r = runner.invoke(app, ["score-iou", files["results"], "--gt", files["gt"], "--out", str(out),
                            "--compare", pred, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["images"][1]["score"] == 0.5
    got = json.loads(r.stdout)
    assert got["predicted"] == pred and got["oracle"] == str(out)
    o1 = round(IMAGE_SCORES[1], 6)
    assert got["n_images"] == 2  # image 3: no oracle score; image 99: not in the oracle
    assert got["mae_image"] == pytest.approx((abs(0.5 - o1) + 0.2) / 2)
    assert got["mae_mean_baseline"] == pytest.approx(abs(0.5 - o1) / 2)  # mean of o1 and 0.5
    assert got["n_instances"] == 3  # index 7 is not in the oracle
    assert got["mae_instance"] == pytest.approx((0.1 + abs(0.5 - round(1 / 3, 6)) + 0.0) / 3)


def test_compare_table(runner, files):
    r = runner.invoke(app, ["score-iou", files["results"], "--gt", files["gt"], "--out", str(files["dir"] / "o.json"),
                            "--compare", predicted_file(files)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert "IoU score error" in r.stderr and "0.1167" in r.stderr and "0.0889" in r.stderr


# --model: the predicted half, with the session's toy Mask R-CNN (``toy_detector``, one epoch: its
# predicted IoUs are near-constant; how good a fitted IoU head is: tests/engine/test_overfit.py)


def run_wsis(runner, *args):
    r = runner.invoke(wsis_app, [*map(str, args)])
    assert r.exit_code == 0, r.output
    return r


def instances(rec: dict) -> list[dict]:
    return [dict(i, image_id=im["image_id"]) for im in rec["images"] for i in im["instances"]]


def check_image_scores(rec: dict) -> None:
    """An image's score is the mean of its instances' (None without any)."""
    for im in rec["images"]:
        ious = [i["iou"] for i in im["instances"]]
        assert im["score"] == (pytest.approx(sum(ious) / len(ious), abs=1e-6) if ious else None)


def mae(predicted: dict, oracle: dict) -> tuple[int, float]:
    o = {im["image_id"]: im["score"] for im in oracle["images"]}
    pairs = [(im["score"], o[im["image_id"]]) for im in predicted["images"]
             if im["score"] is not None and o.get(im["image_id"]) is not None]
    return len(pairs), sum(abs(p - q) for p, q in pairs) / len(pairs)


@pytest.mark.usefixtures("one_torch_thread")
def test_model_scores_name_the_results_of_predict_by_index(runner, toy_detector, tmp_path):
    det = toy_detector
    r = run_wsis(runner, "predict", det["run"], "--images", det["images"], "--dataset", det["gt"], "--device", "cpu")
    scores = sorted(x["score"] for x in json.loads(r.stdout))
    thr = round(scores[len(scores) // 2], 4)  # about the median score: whatever the model, some go, some stay
    assert scores[0] < thr <= scores[-1]
    model = ["--model", det["run"], "--images", det["images"], "--dataset", det["gt"], "--score-thr", thr,
             "--device", "cpu"]
    run_wsis(runner, "predict", det["run"], "--images", det["images"], "--dataset", det["gt"], "--score-thr", thr,
             "--device", "cpu", "--out", tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0 < len(results) < len(scores)
    r = run_wsis(runner, "score-iou", *model, "--out", tmp_path / "p.json")
    assert r.stdout == ""
    rec = json.loads((tmp_path / "p.json").read_text())
    assert rec["info"]["wsis"]["verb"] == "score-iou" and rec["info"]["wsis"]["options"]["score_thr"] == thr
    assert [im["image_id"] for im in rec["images"]] == [1, 2, 3, 4]
    got = instances(rec)
    assert results and [i["index"] for i in got] == list(range(len(results)))
    assert all(i["iou"] == results[i["index"]]["iou"] and i["image_id"] == results[i["index"]]["image_id"]
               for i in got)
    check_image_scores(rec)
    assert f"scored {len(results)} instances in " in r.stderr

    # wsis select reads it
    r = run_wsis(runner, "select", tmp_path / "p.json", "--n", 2, "--beta", 0.5)
    scored = [im for im in rec["images"] if im["score"] is not None]
    want = [im["image_id"] for im in sorted(scored, key=lambda im: (abs(im["score"] - 0.5), im["image_id"]))][:2]
    assert json.loads(r.stdout)["image_ids"] == want

    # the oracle of the same results, and the comparison
    run_wsis(runner, "score-iou", tmp_path / "results.json", "--gt", det["gt"], "--out", tmp_path / "oracle.json")
    oracle = json.loads((tmp_path / "oracle.json").read_text())
    assert [i["index"] for i in instances(oracle)] == list(range(len(results)))
    r = run_wsis(runner, "score-iou", *model, "--out", tmp_path / "p2.json", "--compare", tmp_path / "oracle.json",
                 "--json")
    assert json.loads((tmp_path / "p2.json").read_text())["images"] == rec["images"]
    got = json.loads(r.stdout)
    assert got["predicted"] == str(tmp_path / "p2.json") and got["oracle"] == str(tmp_path / "oracle.json")
    n, value = mae(rec, oracle)
    assert got["n_images"] == n > 0 and got["mae_image"] == pytest.approx(value, abs=1e-6)
    assert got["n_instances"] == len(results)
    real = {i["index"]: i["iou"] for i in instances(oracle)}
    assert got["mae_instance"] == pytest.approx(
        sum(abs(r["iou"] - real[k]) for k, r in enumerate(results)) / len(results), abs=1e-6)
    r = run_wsis(runner, "score-iou", *model, "--out", tmp_path / "p3.json", "--compare", tmp_path / "oracle.json")
    assert r.stdout == "" and "IoU score error" in r.stderr and f"{got['mae_image']:.4f}" in r.stderr

    # without --dataset: the images of the folder, as predict numbers them
    r = run_wsis(runner, "score-iou", "--model", det["run"], "--images", det["images"], "--score-thr", thr,
                 "--device", "cpu")
    folder = json.loads(r.stdout)
    assert [im["image_id"] for im in folder["images"]] == [1, 2, 3, 4]
    assert [i["index"] for i in instances(folder)] == list(range(len(results)))  # 000001.png.. are ids 1..4


@pytest.mark.usefixtures("one_torch_thread")
def test_model_scores_record_their_dataset(runner, toy_detector, tmp_path):
    det = toy_detector
    r = run_wsis(runner, "score-iou", "--model", det["run"], "--images", det["images"], "--dataset", det["gt"],
                 "--score-thr", 0.9, "--device", "cpu")
    options = json.loads(r.stdout)["info"]["wsis"]["options"]
    assert options["model"] == str(det["run"]) and options["dataset"] == str(det["gt"])


@pytest.mark.usefixtures("one_torch_thread")
def test_model_scores_on_ilc_labels_name_the_pseudo_labels(runner, toy_detector, tmp_path):
    det = toy_detector
    ilc, net = tmp_path / "ilc.json", tmp_path / "net.json"
    run_wsis(runner, "data", "weaken", det["gt"], "--to", "ilc", "--out", ilc)
    for rank in ("score", "iou"):
        run_wsis(runner, "pseudolabel", "net", ilc, "--images", det["images"], "--model", det["run"], "--rank", rank,
                 "--device", "cpu", "--out", net)
        anns = json.loads(net.read_text())["annotations"]
        run_wsis(runner, "score-iou", "--model", det["run"], "--images", det["images"], "--dataset", ilc,
                 "--rank", rank, "--device", "cpu", "--out", tmp_path / "p.json")
        rec = json.loads((tmp_path / "p.json").read_text())
        got = instances(rec)
        assert anns and [(i["annotation_id"], i["image_id"]) for i in got] == [(a["id"], a["image_id"]) for a in anns]
        assert [i["iou"] for i in got] == [a["iou"] for a in anns]
        check_image_scores(rec)

    # the oracle of the pseudo-labels, and the comparison by annotation id
    run_wsis(runner, "score-iou", net, "--gt", det["gt"], "--out", tmp_path / "oracle.json")
    oracle = json.loads((tmp_path / "oracle.json").read_text())
    assert [i["annotation_id"] for i in instances(oracle)] == [a["id"] for a in anns]
    r = run_wsis(runner, "score-iou", "--model", det["run"], "--images", det["images"], "--dataset", ilc,
                 "--rank", "iou", "--device", "cpu", "--out", tmp_path / "p2.json", "--compare",
                 tmp_path / "oracle.json", "--json")
    got = json.loads(r.stdout)
    n, value = mae(rec, oracle)
    assert got["n_images"] == n > 0 and got["mae_image"] == pytest.approx(value, abs=1e-6)
    assert got["n_instances"] == len(anns)


@pytest.mark.usefixtures("one_torch_thread")
def test_model_without_an_iou_head(runner, toy_detector, toy_detector_without_iou_head, tmp_path):
    det, run = toy_detector, toy_detector_without_iou_head
    out = tmp_path / "p.json"
    r = runner.invoke(wsis_app, ["score-iou", "--model", str(run), "--images", str(det["images"]),
                                 "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.strip() == (f"wsis: error: {run}: has no IoU head; train it with --iou-head to "
                                "predict mask IoUs")
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    r = runner.invoke(wsis_app, ["score-iou", "--model", str(tmp_path / "empty"), "--images", str(det["images"]),
                                 "--device", "cpu"])
    assert r.exit_code == 1 and "not a wsis training run" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    ([], "give PRED"),
    (["PRED", "--model", "."], "not both"),
    (["PRED"], "--gt"),
    (["--model", "."], "--images"),
    (["PRED", "--gt", "GT", "--images", "."], "go with --model"),
    (["PRED", "--gt", "GT", "--json"], "--compare"),
    (["PRED", "--gt", "GT", "--compare", "C", "--json"], "--out FILE"),
    (["-", "--gt", "-"], "only one input can be stdin"),
])
def test_usage_errors(runner, files, args, message):
    sub = {"PRED": files["results"], "GT": files["gt"], "C": files["results"]}
    r = runner.invoke(app, ["score-iou", *[sub.get(a, a) for a in args]])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.replace("│", " ").split())


def test_input_errors_one_line(runner, files):
    d = files["dir"]
    missing = str(d / "nope.json")

    def fails(args, expected):
        r = runner.invoke(app, ["score-iou", *args])
        assert r.exit_code == 1, r.output
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("wsis: error: ")
        assert expected in r.stderr
        return r

    fails([missing, "--gt", files["gt"]], f"{missing}: no such file")
    fails([files["results"], "--gt", missing], f"{missing}: no such file")
    bad = [dict(results_list()[0], image_id=9)]
    fails([str(write(d / "bad.json", bad)), "--gt", files["gt"]],
          "bad.json: result 0 (image 9): 'image_id' names no image of the ground truth")
    noscore = [{k: v for k, v in results_list()[0].items() if k != "score"}]
    fails([str(write(d / "noscore.json", noscore)), "--gt", files["gt"]],
          "noscore.json: result 0 (image 1): 'score' must be a finite number")
    gt = gt_dataset()
    del gt["annotations"][0]["segmentation"]
    fails([files["results"], "--gt", str(write(d / "boxgt.json", gt))],
          "boxgt.json: annotation 1 (image 1): has no mask; --gt needs")
    cmp_bad = str(write(d / "cmp.json", {"images": [{"image_id": 1, "score": 0.5, "instances": [{"iou": 1}]}]}))
    out = d / "never.json"
    fails([files["results"], "--gt", files["gt"], "--compare", cmp_bad, "--out", str(out)],
          "cmp.json: image 1, instances[0]: needs exactly one of 'annotation_id' or 'index'")
    assert not out.exists()  # the --compare file is read before anything is written
