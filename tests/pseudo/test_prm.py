"""PRM on a toy classifier whose class response is known: class 0 answers to red, class 1 to
blue, through real convolutions (so gradients and peak response maps are computed, not faked)."""

import numpy as np
import pytest
import torch
from torch import nn

from wsis_cli.models.classifier import PeakClassifier
from wsis_cli.coco import labels_of
from wsis_cli.pseudo.prm import PRMConfig, image_instances, peak_response_maps, prm_mask


class ToyBackbone(nn.Module):
    """Stride 4 then stride 16; 'features' are colour channels smoothed by average pooling."""

    stride = 16
    channels = 3

    def __init__(self):
        super().__init__()
        self.blur = nn.AvgPool2d(5, stride=1, padding=2, count_include_pad=False)

    def stem_and_layer1(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)

    def rest(self, f):
        return torch.nn.functional.avg_pool2d(self.blur(self.blur(f)), 4)

    def forward(self, x):
        return self.rest(self.stem_and_layer1(x))


def toy_model():
    m = PeakClassifier(ToyBackbone(), 2)
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
        m.head.weight[0, 0] = 1.0   # red
        m.head.weight[0, 2] = -1.0
        m.head.weight[1, 2] = 1.0   # blue
        m.head.weight[1, 0] = -1.0
    return m.eval()


def disc(h, w, cx, cy, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r * r


@pytest.fixture
def scene():
    h = w = 128
    rgb = np.full((h, w, 3), 120, np.uint8)
    reds = [disc(h, w, 32, 36, 12), disc(h, w, 92, 88, 14)]
    blue = disc(h, w, 96, 28, 11)
    for m in reds:
        rgb[m] = (230, 30, 30)
    rgb[blue] = (30, 30, 230)
    return rgb, reds, blue


CONFIG = {"category_ids": [7, 9], "size": 128}


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_peaks_are_found_where_the_shapes_are(scene):
    rgb, reds, blue = scene
    cfg = PRMConfig(refine="grabcut")
    found, maps, ids = image_instances(toy_model(), rgb, {7: 2, 9: 1}, CONFIG, cfg, device=torch.device("cpu"),
                                       with_maps=True)
    assert sorted(f["category_id"] for f in found) == [7, 7, 9]
    for f in found:
        x, y = f["point"]
        targets = reds if f["category_id"] == 7 else [blue]
        hit = [m for m in targets if m[int(y), int(x)] or np.hypot(*(np.argwhere(m).mean(0) - (y, x))) < 12]
        assert hit, f"peak {f['point']} of class {f['category_id']} is on no shape of its class"
        assert max(iou(f["mask"], m) for m in targets) > 0.6
        assert 0 < f["score"] < 1
    # the two red instances are two different discs
    red_masks = [f["mask"] for f in found if f["category_id"] == 7]
    assert iou(red_masks[0], red_masks[1]) == 0
    assert maps.shape == (2, 32, 32) and ids == [7, 9]
    assert maps.min() >= 0 and maps.max() <= 1


def test_il_labels_keep_peaks_above_the_relative_threshold(scene):
    rgb, _, _ = scene
    found, _, _ = image_instances(toy_model(), rgb, {7: None}, CONFIG, PRMConfig(refine="none", peak_rel=0.5),
                                  device=torch.device("cpu"))
    assert len(found) >= 2 and all(f["category_id"] == 7 for f in found)
    strict, _, _ = image_instances(toy_model(), rgb, {7: None}, CONFIG, PRMConfig(refine="none", peak_rel=1.0),
                                   device=torch.device("cpu"))
    assert len(strict) == 1


def test_count_caps_the_instances_and_unknown_classes_are_skipped(scene):
    rgb, _, _ = scene
    found, _, _ = image_instances(toy_model(), rgb, {7: 1, 5: 3}, CONFIG, PRMConfig(refine="none"),
                                  device=torch.device("cpu"))
    assert [f["category_id"] for f in found] == [7]


def test_batched_backward_equals_one_peak_at_a_time(scene):
    rgb, _, _ = scene
    model = toy_model()
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    peaks = [(0, 2, 2), (1, 1, 6), (0, 5, 5)]  # the red discs and the blue one
    together = peak_response_maps(model, x, peaks, batch=16)
    apart = np.concatenate([peak_response_maps(model, x, [p]) for p in peaks])
    assert together.shape == (3, 32, 32)
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-7)
    assert all(m.max() > 0 for m in together)
    assert not np.allclose(together[0], together[2])  # each peak has its own map


def test_prm_mask_rule():
    h = w = 40
    prm = np.zeros((h, w), np.float32)
    prm[5:15, 5:15] = 1.0
    prm[25:35, 25:35] = 0.5   # a second region, also above 0.3 x max
    prm[8, 8] = 2.0
    rgb = np.zeros((h, w, 3), np.uint8)
    m = prm_mask(rgb, prm, (8.5, 8.5), PRMConfig(refine="none", prm_thr=0.3))
    assert m[5:15, 5:15].all() and not m[25:35, 25:35].any()  # the part holding the peak only
    m2 = prm_mask(rgb, prm, (30.5, 30.5), PRMConfig(refine="none", prm_thr=0.2))
    assert m2[25:35, 25:35].all() and not m2[5:15, 5:15].any()
    assert not prm_mask(rgb, np.zeros((h, w), np.float32), (1, 1), PRMConfig()).any()


def test_labels_of_counts():
    anns = [{"category_id": 1}, {"category_id": 1}, {"category_id": 2, "count": None},
            {"category_id": 3, "count": 4}, {"category_id": 4, "bbox": [0, 0, 1, 1], "iscrowd": 1}]
    assert labels_of(anns) == {1: 2, 2: None, 3: 4, 4: None}


def test_summary_line():
    from wsis_cli.pseudo.prm import summary_line

    s = {"images": 3, "instances": 5, "empty_masks": 0, "short_of_count": 0}
    assert summary_line(s) == "5 instances in 3 images"
    assert summary_line({**s, "empty_masks": 2, "short_of_count": 1}) == (
        "5 instances in 3 images; 1 counted instances had no peak; 2 peaks dropped (empty mask)")
