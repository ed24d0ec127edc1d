"""`wsis show`: overlays written for a dataset, --ids as a list or a file, errors."""

import json


from conftest import write
from wsis_cli.cli.app import app
from wsis_cli.images import read_image
from wsis_cli.synth import synthesize


def test_cli(runner, tmp_path):
    gt = synthesize(tmp_path, n=3, size=64, seed=0)
    ds = write(tmp_path / "gt.json", gt)
    out = tmp_path / "show"
    r = runner.invoke(app, ["show", str(ds), "--images", str(tmp_path / "images"), "--out", str(out), "--ids", "1,3"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "3.png", "contact_sheet.png"]
    pic = read_image(out / "1.png")
    assert pic.shape == (384, 384, 3)  # small images are drawn enlarged
    r = runner.invoke(app, ["show", str(ds), "--images", str(tmp_path / "images"), "--out", str(out), "--ids", "9"])
    assert r.exit_code == 1 and "has no image 9" in r.stderr
    il = json.loads(ds.read_text())
    il["annotations"] = [{"id": 1, "image_id": 1, "category_id": 2, "count": None}]
    r = runner.invoke(app, ["show", str(write(tmp_path / "il.json", il)), "--images", str(tmp_path / "images"),
                            "--out", str(tmp_path / "il"), "--max", "1"])
    assert r.exit_code == 0 and (tmp_path / "il" / "1.png").exists()


def test_cli_bad_inputs(runner, tmp_path):
    ds = write(tmp_path / "gt.json", synthesize(tmp_path, n=2, size=64, seed=0))
    images = str(tmp_path / "images")
    r = runner.invoke(app, ["show", str(ds), "--images", images, "--out", str(tmp_path / "s"), "--ids", "1,x"])
    assert r.exit_code == 2 and "neither a comma-separated list" in r.output
    r = runner.invoke(app, ["show", str(ds), "--images", images, "--out", str(ds)])
    assert r.exit_code == 2
    r = runner.invoke(app, ["show", str(ds), "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and not (tmp_path / "s").exists()
    (tmp_path / "images" / "000002.png").unlink()
    r = runner.invoke(app, ["show", str(ds), "--images", images, "--out", str(tmp_path / "s")])
    assert r.exit_code == 1 and "000002.png: image file not found (image 2" in r.stderr
    assert not (tmp_path / "s").exists()


def test_a_picture_of_another_size_than_its_record_is_refused(runner, tmp_path):
    gt = synthesize(tmp_path, n=2, size=64, seed=0)
    gt["images"][1]["width"] = gt["images"][1]["height"] = 96
    ds = write(tmp_path / "gt.json", {**gt, "annotations": []})
    r = runner.invoke(app, ["show", str(ds), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "s")])
    assert r.exit_code == 1 and r.stderr.strip().endswith("is 64x64 px but image 2 of " + str(ds) + " says 96x96")
    assert not (tmp_path / "s").exists()  # nothing drawn
