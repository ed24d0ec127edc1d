"""`wsis evaluate`: the JSON record and table, and errors."""

from __future__ import annotations

import json

from conftest import write

from wsis_cli.cli.app import app


# ------------------------------------------------------------------------------- CLI
def results_from(ds_obj, keep=None):
    """Perfect predictions: the masks of the annotations (those in ``keep``), score 1."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": 1.0} for a in ds_obj["annotations"] if keep is None or a["id"] in keep]


def test_cli_json_and_table(runner, tmp_path, two_images):
    gt = write(tmp_path / "gt.json", two_images)
    pred = write(tmp_path / "pred.json", results_from(two_images, keep={3}))
    r = runner.invoke(app, ["evaluate", str(gt), str(pred), "--json", "--per-class", "--iou-thrs", "0.5,0.9"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)  # pycocotools' prints would break this
    assert set(rec) >= {"mAP", "AP", "AP_S", "AP_L", "ABO", "per_class"}
    assert set(rec["mAP"]) == {"0.5", "0.9"}
    assert rec["per_class"][0]["name"] == "c1"
    r = runner.invoke(app, ["evaluate", str(gt), str(pred)])
    assert r.exit_code == 0 and r.stdout == ""
    assert "mAP@0.25" in r.stderr and "ABO" in r.stderr
    r = runner.invoke(app, ["evaluate", str(gt), "-", "--json", "--iou-thrs", "0.123456789"],
                      input=json.dumps(results_from(two_images)))
    assert r.exit_code == 0, r.output
    assert list(json.loads(r.stdout)["mAP"]) == ["0.123456789"]  # the threshold as given


def test_cli_errors(runner, tmp_path, two_images):
    gt = write(tmp_path / "gt.json", two_images)
    bad = results_from(two_images)
    bad[1]["image_id"] = 42
    pred = write(tmp_path / "pred.json", bad)
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["evaluate", str(gt), str(pred), "--out", str(out)])
    assert r.exit_code == 1
    assert r.stderr.strip() == f"wsis: error: {pred}: result 1 (image 42): 'image_id' names no image of the ground truth"
    assert not out.exists()
    for bad in ("0.5,abc", "0", "nan", "1.5", ","):
        r = runner.invoke(app, ["evaluate", str(gt), str(gt), "--iou-thrs", bad])
        assert r.exit_code == 2, (bad, r.output)
    r = runner.invoke(app, ["evaluate", str(gt), "-"], input=json.dumps(bad_results := results_from(two_images)[:1]))
    assert r.exit_code == 0
    bad_results[0]["category_id"] = 9
    r = runner.invoke(app, ["evaluate", str(gt), "-"], input=json.dumps(bad_results))
    assert r.exit_code == 1
    assert r.stderr.strip() == "wsis: error: <stdin>: result 0 (image 1): 'category_id' 9 names no category of the ground truth"


def test_cli_bad_mask_is_one_line(runner, tmp_path, two_images):
    gt = write(tmp_path / "gt.json", two_images)
    bad = results_from(two_images)
    bad[2]["segmentation"] = dict(bad[2]["segmentation"], counts=bad[2]["segmentation"]["counts"] + "0")
    pred = write(tmp_path / "pred.json", bad)
    r = runner.invoke(app, ["evaluate", str(gt), str(pred)])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"wsis: error: {pred}: result 2 (image 2): compressed RLE counts sum to ")
    assert r.stderr.count("\n") == 1


def test_cli_imports_only_what_it_needs(tmp_path, two_images):
    """`evaluate --help` loads no numerics; `evaluate` itself no torch, scipy or OpenCV."""
    import subprocess
    import sys

    gt = write(tmp_path / "gt.json", two_images)
    pred = write(tmp_path / "pred.json", results_from(two_images))
    code = ("import sys; from wsis_cli.cli.app import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = [m for m in ('torch', 'torchvision', 'cv2', 'scipy', 'numpy', 'pycocotools', 'faster_coco_eval')\n"
            "         if m in sys.modules]\n"
            "print(' '.join(heavy), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, "evaluate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    r = subprocess.run([sys.executable, "-c", code, "evaluate", str(gt), str(pred), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mAP"]["0.5"] > 0.99
    assert not {"torch", "torchvision", "cv2", "scipy"} & set(r.stderr.split()), r.stderr
