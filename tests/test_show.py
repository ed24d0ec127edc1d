"""Label pictures: overlays (fallback masks hatched), the contact sheet, a dataset drawn into a folder."""

from __future__ import annotations

import numpy as np
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


def test_show_dataset_writes_one_png_per_image_and_a_sheet(tmp_path):
    from wsis_cli.coco import parse_dataset
    from wsis_cli.show import show_dataset

    gt = synthesize(tmp_path / "data", n=3, size=48, seed=1)
    ds = parse_dataset(gt, path="gt.json")
    ds.annotations[0]["wsis"] = {"method": "ellipse", "valid": False, "box_iou": 0.1}
    ds.reindex()
    calls = []
    n = show_dataset(ds, ds.images[:2], tmp_path / "data" / "images", tmp_path / "out",
                     progress=lambda done, total: calls.append((done, total)))
    assert n == int(ds.annotations[0]["image_id"] in {im["id"] for im in ds.images[:2]})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{im['id']}.png" for im in ds.images[:2]] + ["contact_sheet.png"])
    assert read_image(tmp_path / "out" / f"{ds.images[0]['id']}.png").shape[2] == 3
    assert calls == [(1, 2), (2, 2)]
