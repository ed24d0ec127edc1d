import json

import numpy as np
import pytest

from conftest import write
from wsis_cli.cli.app import app
from wsis_cli.pseudo.scoremaps import read_score_maps
from wsis_cli.synth import synthesize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """Three 48 px synthetic images (classes disc=1, box=2) and a one-epoch segmenter on them."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("seg")
    ds = synthesize(root, n=3, size=48, seed=0, n_classes=2)
    write(root / "gt.json", ds)
    r = CliRunner().invoke(app, ["train", "segmenter", str(root / "gt.json"), "--images", str(root / "images"),
                                 "--out", str(root / "seg.pt"), "--backbone", "resnet18", "--weights", "none",
                                 "--size", "32", "--epochs", "1", "--batch-size", "3", "--threads", "1"])
    assert r.exit_code == 0, r.output
    return root


def _dataset(root, tmp_path):
    """Image 1: labels of class 1 only (IL); image 2: its gt masks; image 3: no labels; plus a category
    the segmenter does not know."""
    ds = json.loads((root / "gt.json").read_text())
    ds["categories"].append({"id": 9, "name": "other"})
    anns = [{"id": 100, "image_id": 1, "category_id": 1, "count": None},
            *[a for a in ds["annotations"] if a["image_id"] == 2]]
    return write(tmp_path / "d.json", {**ds, "annotations": anns}), ds


def test_maps_for_the_labelled_classes_only(runner, seg, tmp_path):
    d, ds = _dataset(seg, tmp_path)
    out = tmp_path / "maps"
    r = runner.invoke(app, ["predict-maps", str(seg / "seg.pt"), "--images", str(seg / "images"), "--dataset",
                            str(d), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert f"wrote 2 score map files to {out} (1 without labels: no file)" in " ".join(r.stderr.split())
    assert sorted(p.name for p in out.iterdir()) == ["000001.npz", "000002.npz"]
    with np.load(out / "000001.npz") as z:
        assert z["category_ids"].tolist() == [1] and z["scores"].shape == (1, 32, 32)
        assert z["scores"].dtype == np.float32 and 0 <= z["scores"].min() and z["scores"].max() <= 1
    with np.load(out / "000002.npz") as z:
        classes = sorted({a["category_id"] for a in ds["annotations"] if a["image_id"] == 2})
        assert z["category_ids"].tolist() == classes and z["scores"].shape == (len(classes), 32, 32)
        if len(classes) == 2:  # softmax over background + both: the planes never sum past 1
            assert (z["scores"].sum(0) <= 1 + 1e-5).all()
    planes = read_score_maps(out / "000002.npz", height=48, width=48, record="image 2")  # what ccgr reads
    assert all(p.shape == (48, 48) for p in planes.values())

    # an image labelled with an unknown class only gets no file, and a warning names the class
    anns = json.loads(d.read_text())
    anns["annotations"].append({"id": 101, "image_id": 3, "category_id": 9, "count": None})
    d2 = write(tmp_path / "d2.json", anns)
    r = runner.invoke(app, ["predict-maps", str(seg / "seg.pt"), "--images", str(seg / "images"), "--dataset",
                            str(d2), "--out", str(tmp_path / "m2"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "not trained on categories [9] (other)" in " ".join(r.stderr.split())
    assert sorted(p.name for p in (tmp_path / "m2").iterdir()) == ["000001.npz", "000002.npz"]


def test_bad_input_is_one_line(runner, seg, tmp_path):
    d, _ = _dataset(seg, tmp_path)

    def run(model, dataset, out, images=seg / "images"):
        return runner.invoke(app, ["predict-maps", str(model), "--images", str(images), "--dataset", str(dataset),
                                   "--out", str(out)])

    (tmp_path / "junk.pt").write_text("junk")
    r = run(tmp_path / "junk.pt", d, tmp_path / "m")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "junk.pt: not a wsis-segmenter checkpoint" in r.stderr
    r = run(tmp_path / "none.pt", d, tmp_path / "m")
    assert r.exit_code == 1 and r.stderr.strip() == f"wsis: error: {tmp_path / 'none.pt'}: no such file"
    (tmp_path / "bad.json").write_text("{")
    r = run(seg / "seg.pt", tmp_path / "bad.json", tmp_path / "m")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "bad.json" in r.stderr
    ds = json.loads(d.read_text())
    ds["images"][0]["width"] = 50
    wrong = write(tmp_path / "wrong.json", ds)
    r = run(seg / "seg.pt", wrong, tmp_path / "m")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "is 48x48 px but image 1" in r.stderr
    (tmp_path / "file").write_text("")
    assert run(seg / "seg.pt", d, tmp_path / "file").exit_code == 2
    r = runner.invoke(app, ["predict-maps", str(seg / "seg.pt"), "--images", str(seg / "images"), "--dataset", str(d)])
    assert r.exit_code == 2 and "--out" in r.output


def test_help(runner):
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "predict-maps" in r.stdout
    r = runner.invoke(app, ["predict-maps", "--help"], env={"COLUMNS": "200"})
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0 and "one plane per labelled" in text
    for opt in ("--images", "--dataset", "--out", "--device", "--quiet"):
        assert opt in text
