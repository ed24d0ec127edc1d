import json

import cv2
import numpy as np

from wsis_cli.coco import load_dataset, rle_to_mask
from wsis_cli.images import read_image
from wsis_cli.synth import CLASSES, make_image, synthesize


def test_make_image_is_deterministic_and_masks_never_overlap():
    a_img, a_inst = make_image(np.random.default_rng([0, 3]), size=96)
    b_img, b_inst = make_image(np.random.default_rng([0, 3]), size=96)
    np.testing.assert_array_equal(a_img, b_img)
    assert [c for c, _ in a_inst] == [c for c, _ in b_inst]
    stack = np.stack([m for _, m in a_inst]).astype(int)
    assert stack.sum(axis=0).max() == 1
    assert a_img.shape == (96, 96, 3) and a_img.dtype == np.uint8


def test_synthesize_writes_consistent_coco(tmp_path):
    ds = synthesize(tmp_path, n=12, size=128, seed=1)
    (tmp_path / "gt.json").write_text(json.dumps(ds))
    gt = load_dataset(tmp_path / "gt.json")
    assert len(gt.images) == 12 and {c["name"] for c in gt.categories} == {c[0] for c in CLASSES}
    per_image = [len(gt.anns_by_image[im["id"]]) for im in gt.images]
    assert min(per_image) >= 1 and max(per_image) >= 3
    touching = 0
    areas = []
    for im in gt.images:
        assert read_image(tmp_path / "images" / im["file_name"]).shape == (128, 128, 3)
        masks = [rle_to_mask(a["segmentation"]) for a in gt.anns_by_image[im["id"]]]
        for a, m in zip(gt.anns_by_image[im["id"]], masks):
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert a["area"] == m.sum()
            areas.append(a["area"])
        for i, m in enumerate(masks):  # a dilated mask meeting another: the two touch
            grown = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            touching += any((grown & o).any() for j, o in enumerate(masks) if j != i)
    assert touching > 0
    areas = np.array(areas)
    assert (areas < 32 * 32).any()


def test_default_size_has_small_and_large_objects(tmp_path):
    ds = synthesize(tmp_path, n=30, size=256, seed=0)
    areas = np.array([a["area"] for a in ds["annotations"]])
    small = (areas < 4096).mean()
    assert 0.3 < small < 0.85, small


