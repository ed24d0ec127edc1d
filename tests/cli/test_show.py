import json

import numpy as np

from conftest import write
from wsis_cli.cli.app import app
from wsis_cli.images import read_image
from wsis_cli.show import contact_sheet, instance_colour, is_fallback, render_overlay
from wsis_cli.synth import synthesize


def test_overlay_marks_fallback_masks_differently():
    rgb = np.full((40, 40, 3), 100, np.uint8)
    from wsis_cli.coco import mask_to_rle
    from wsis_cli.pseudo.fallback import ellipse_mask

    m = ellipse_mask([5, 5, 35, 35], 40, 40)
    good = {"category_id": 1, "bbox": [5, 5, 30, 30], "segmentation": mask_to_rle(m),
            "wsis": {"method": "grabcut", "valid": True, "box_iou": 0.9}}
    bad = dict(good, wsis={"method": "ellipse", "valid": False, "box_iou": 0.2})
    assert not is_fallback(good) and is_fallback(bad)
    a = render_overlay(rgb, [good], {1: {"name": "x"}}, min_side=40)
    b = render_overlay(rgb, [bad], {1: {"name": "x"}}, min_side=40)
    inside = m.copy()
    inside[:10] = False  # away from the label text
    colour = np.array(instance_colour(0))
    tinted = lambda img: (np.abs(img[inside].astype(int) - colour).sum(1) < np.abs(100 - colour).sum()).mean()
    assert tinted(a) > 0.95  # solid fill
    assert 0.3 < tinted(b) < 0.7  # hatched: about half the pixels


def test_contact_sheet_grid():
    tiles = [(str(i), np.full((20, 30, 3), i * 40, np.uint8)) for i in range(5)]
    sheet = contact_sheet(tiles, cell=32)
    assert sheet.shape == (2 * (32 + 16), 3 * 32, 3)


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
