"""benchmarks/ladder.py: one tiny rung end to end through the CLI verbs (the ladder itself is a
benchmark: its figures are in benchmarks/RESULTS.md), its file format, merging and the plot."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

LADDER = Path(__file__).resolve().parents[2] / "benchmarks" / "ladder.py"


@pytest.fixture(scope="module")
def ladder():
    spec = importlib.util.spec_from_file_location("ladder", LADDER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ladder"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_one_tiny_rung_end_to_end(ladder, tmp_path):
    out = tmp_path / "lad"
    rc = ladder.main(["--out", str(out), "--rungs", "full", "--train", "3", "--test", "1", "--size", "48",
                      "--epochs", "1", "--jobs", "1", "--strong", "1", "--select", "1"])
    assert rc == 0
    doc = json.loads((out / "ladder.json").read_text())
    full = doc["rungs"]["full"]
    assert set(full["test"]) == {"mAP25", "mAP50", "mAP75", "AP", "AP_S", "AP_L"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in full["test"].values())
    assert full["pseudo"] is None and full["seconds"] > 0 and full.get("ratio_to_full") in (1.0, None)
    # 3 fully annotated images, priced by `wsis budget` with the set's own statistics
    data = doc["settings"]["data"]
    per_image = data["classes"] * 1.0 + data["objects_per_image"] * 79.0
    assert full["cost_hours"] == pytest.approx(3 * per_image / 3600, rel=0.02)
    assert doc["settings"]["train"] == 3 and (out / "rungs" / "full" / "run" / "best.pt").is_file()
    import cv2

    png = cv2.imread(str(out / "ladder.png"))
    assert png.shape == (600, 900, 3) and (png < 250).any()


def test_a_failing_rung_is_recorded_and_the_others_kept(ladder, tmp_path):
    a = ladder.parse(["--out", str(tmp_path), "--rungs", "full"])
    earlier = {"rungs": {"full": {"test": {"mAP50": 0.5}, "cost_hours": 1.0, "seconds": 1.0},
                         "box-only": {"test": {"mAP50": 0.4}, "cost_hours": 0.2, "seconds": 1.0}},
               "settings": {k: getattr(a, k) for k in ladder.SAME_DATA}}
    (tmp_path / "ladder.json").write_text(json.dumps(earlier))
    new = {"full": {"test": {"mAP50": 0.6}, "cost_hours": 1.0, "seconds": 2.0}}
    merged = ladder.merged(tmp_path / "ladder.json", a, new)
    assert list(merged) == ["full", "box-only"] and merged["full"]["test"]["mAP50"] == 0.6
    other = ladder.parse(["--out", str(tmp_path), "--rungs", "full", "--size", "96"])
    assert ladder.merged(tmp_path / "ladder.json", other, new) == new  # other data: replaced


def test_unknown_rungs_and_a_pool_without_weak_images_are_refused(ladder, capsys):
    with pytest.raises(SystemExit):
        ladder.parse(["--out", "x", "--rungs", "full,boxes"])
    assert "unknown rung(s) boxes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ladder.parse(["--out", "x", "--train", "10", "--strong", "8", "--select", "2"])


def test_plot_places_points_on_a_log_axis(ladder, tmp_path):
    import cv2

    rungs = {"a": {"test": {"mAP50": 0.2}, "cost_hours": 0.1}, "b": {"test": {"mAP50": 0.6}, "cost_hours": 10.0},
             "broken": {"test": None, "cost_hours": None}}
    ladder.plot(rungs, tmp_path / "p.png")
    img = cv2.imread(str(tmp_path / "p.png"))
    dot = (img[:, :, 2] > 150) & (img[:, :, 0] < 80)  # the points: (40, 90, 200) BGR
    ys, xs = np.nonzero(dot)
    assert len(xs) and xs.min() < 300 < 600 < xs.max()  # 0.1 h left, 10 h right
