"""BoxInst's box terms on hand-made tensors: projections, colour pairs, the box in the RoI frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsis_cli.models.box_losses import (
    colour_similarity,
    pairwise_loss,
    pairwise_weight,
    projection_loss,
    rasterise_boxes,
    rgb_to_lab,
    roi_lab,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S = 8  # a small grid: the functions take any side


def logits_of(mask: torch.Tensor, strength: float = 20.0) -> torch.Tensor:
    """Logits whose sigmoid is ~1 on ``mask`` and ~0 off it."""
    return (mask.float() * 2 - 1) * strength


def test_rasterise_boxes_in_the_roi_grid():
    rois = torch.tensor([[0.0, 0.0, 8.0, 8.0], [10.0, 20.0, 26.0, 36.0]])
    boxes = torch.tensor([[2.0, 1.0, 6.0, 8.0], [10.0, 20.0, 26.0, 36.0]])  # the second fills its RoI
    m = rasterise_boxes(boxes, rois, S)
    assert m.shape == (2, S, S)
    want = torch.zeros(S, S)
    want[1:8, 2:6] = 1  # cell centres 2.5..5.5 in x, 1.5..7.5 in y
    assert torch.equal(m[0], want)
    assert torch.equal(m[1], torch.ones(S, S))
    # a box that misses the RoI draws nothing
    assert rasterise_boxes(torch.tensor([[50.0, 50.0, 60.0, 60.0]]), rois[:1], S).sum() == 0


def test_projection_loss_is_zero_when_the_mask_fills_the_box_projections():
    box = torch.zeros(1, S, S)
    box[0, 2:6, 1:7] = 1
    assert projection_loss(logits_of(box), box).item() == pytest.approx(0.0, abs=1e-6)
    # any mask with the box's projections costs nothing: a cross inside the box is enough
    cross = torch.zeros(1, S, S)
    cross[0, 2:6, 3] = 1
    cross[0, 4, 1:7] = 1
    assert projection_loss(logits_of(cross), box).item() == pytest.approx(0.0, abs=1e-6)
    # a mask that misses columns or rows of the box, or spills out of it, costs
    small = torch.zeros(1, S, S)
    small[0, 3:5, 2:4] = 1
    spill = box.clone()
    spill[0, 0, 0] = 1
    empty = torch.zeros(1, S, S)
    costs = [projection_loss(logits_of(m), box).item() for m in (small, spill, empty)]
    assert all(c > 0.05 for c in costs)
    assert costs[2] == pytest.approx(2.0, abs=1e-3)  # nothing predicted: dice 1 on each axis
    assert costs[0] > costs[1]  # 4 of 6 columns and 2 of 4 rows miss; one cell spills


def test_projection_loss_gradient_pulls_missing_columns_up():
    box = torch.zeros(1, S, S)
    box[0, 2:6, 1:7] = 1
    logits = torch.full((1, S, S), -3.0, requires_grad=True)
    projection_loss(logits, box).backward()
    g = logits.grad[0]
    assert (g[2:6, 1:7] < 0).any()  # raising a cell inside the box lowers the loss
    outside = torch.ones(S, S, dtype=torch.bool)
    outside[2:6] = False
    outside[:, 1:7] = False  # cells in neither a column nor a row of the box
    assert (g[outside] >= 0).all()  # ... are never pulled up
    assert projection_loss(torch.zeros(0, S, S), torch.zeros(0, S, S)).item() == 0.0


def test_rgb_to_lab_matches_opencv():
    import cv2

    rng = np.random.default_rng(0)
    rgb = rng.random((5, 7, 3)).astype(np.float32)
    rgb[0, 0], rgb[0, 1], rgb[0, 2] = (1, 1, 1), (0, 0, 0), (1, 0, 0)
    want = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    got = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want).max() < 0.5  # OpenCV's float conversion approximates the cube root a little
    assert got[0, 0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.01)
    assert got[0, 2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.05)  # sRGB red


def two_colour_grid() -> torch.Tensor:
    """Lab colours of a grid: left half white, right half black (FloatTensor[1, 3, S, S])."""
    rgb = torch.ones(1, 3, S, S)
    rgb[..., S // 2:] = 0
    return rgb_to_lab(rgb)


def test_colour_similarity_of_neighbours():
    sim = colour_similarity(two_colour_grid())
    assert sim.shape == (1, 8, S, S)
    # (0, 0)'s neighbours: only those inside the grid count (3 of 8), all the same white
    assert sorted(sim[0, :, 0, 0].tolist()) == [0.0] * 5 + [1.0] * 3
    # across the white/black edge the similarity is exp(-100 / 2), far below tau
    right = [k for k, (dy, dx) in enumerate([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
             if (dy, dx) == (0, 1)][0]
    assert sim[0, right, 3, S // 2 - 1].item() < 1e-10
    assert sim[0, right, 3, 1].item() == pytest.approx(1.0)


def test_pairwise_loss_prefers_one_label_on_one_colour():
    lab = rgb_to_lab(torch.full((1, 3, S, S), 0.5))  # one uniform colour
    box = torch.ones(1, S, S)
    one = torch.ones(1, S, S)
    split = torch.zeros(1, S, S)
    split[..., : S // 2] = 1  # the same colour cut in two labels
    one_cost = pairwise_loss(logits_of(one), lab, box).item()
    split_cost = pairwise_loss(logits_of(split), lab, box).item()
    assert one_cost == pytest.approx(0.0, abs=1e-6)
    assert split_cost > 1.0  # the pairs across the cut pay ~20 each
    # a cut along a colour edge costs nothing: those pairs are not similar
    edge = two_colour_grid()
    assert pairwise_loss(logits_of(split), edge, box).item() == pytest.approx(0.0, abs=1e-6)
    # only pairs whose cell lies in the box count: a cut outside the box is free
    inside = torch.zeros(1, S, S)
    inside[..., : S // 2 - 2] = 1
    assert pairwise_loss(logits_of(split), lab, inside).item() == pytest.approx(0.0, abs=1e-6)
    # uncertain masks (p = 0.5) pay log 2 on every pair
    assert pairwise_loss(torch.zeros(1, S, S), lab, box).item() == pytest.approx(np.log(2.0), abs=1e-5)
    assert pairwise_loss(torch.zeros(0, S, S), lab[:0], box[:0]).item() == 0.0


def test_pairwise_weight_ramps_up():
    assert pairwise_weight(0, 100) == 0.0
    assert pairwise_weight(50, 100) == 0.5
    assert pairwise_weight(100, 100) == pairwise_weight(10**6, 100) == 1.0
    assert pairwise_weight(5, 0) == 1.0


def test_roi_lab_samples_each_roi():
    img = torch.zeros(2, 3, 32, 32)
    img[0, 0] = 1.0  # image 0 red
    img[1, 2, :, 16:] = 1.0  # image 1: right half blue
    rois = [torch.tensor([[4.0, 4.0, 12.0, 12.0]]), torch.tensor([[20.0, 4.0, 30.0, 12.0], [0.0, 0.0, 8.0, 8.0]])]
    lab = roi_lab(img, rois, S)
    assert lab.shape == (3, 3, S, S)
    want = rgb_to_lab(torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 0]])[:, :, None, None])[:, :, 0, 0]
    for k in range(3):
        assert torch.allclose(lab[k].flatten(1).mean(1), want[k], atol=0.05)
    assert roi_lab(img, [torch.zeros(0, 4), torch.zeros(0, 4)], S).shape == (0, 3, S, S)


def test_a_mask_along_the_colour_edge_beats_filling_the_box():
    # an orange disc on blue, its box inside a larger RoI: the disc has the box's projections and
    # cuts only dissimilar pairs (cost ~0); filling the box cuts similar blue pairs at its corners
    yy, xx = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
    disc = (xx - 32) ** 2 + (yy - 32) ** 2 <= 20**2
    img = torch.tensor([0.2, 0.3, 0.8])[:, None, None].repeat(1, 64, 64)
    img[:, disc] = torch.tensor([0.9, 0.6, 0.1])[:, None]
    side, roi = 28, torch.tensor([[4.0, 4.0, 60.0, 60.0]])
    box = rasterise_boxes(torch.tensor([[12.0, 12.0, 52.0, 52.0]]), roi, side)
    lab = roi_lab(img[None], [roi], side)
    centres = (torch.arange(side) + 0.5) / side * 56 + 4
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    disc_grid = ((gx - 32) ** 2 + (gy - 32) ** 2 <= 20**2)[None]
    cost = {name: (projection_loss(logits_of(m, 10), box).item(), pairwise_loss(logits_of(m, 10), lab, box).item())
            for name, m in (("disc", disc_grid), ("box", box > 0))}
    assert cost["disc"][0] == pytest.approx(0.0, abs=1e-6) and cost["box"][0] == pytest.approx(0.0, abs=1e-6)
    assert cost["disc"][1] < 1e-3 < 0.1 < cost["box"][1]


def test_a_filled_grid_costs_projection_loss_only_in_a_wider_frame():
    """Why a box-hugging RoI frame is weak supervision: there a mask filling the whole grid has zero
    projection loss; in a frame 1.5x the box it does not."""
    box = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    filled = torch.full((1, 28, 28), 20.0)
    assert projection_loss(filled, rasterise_boxes(box, box, 28)).item() < 1e-3
    wide = torch.tensor([[10.0, 10.0, 70.0, 70.0]])  # the box widened 1.5x about its centre
    assert projection_loss(filled, rasterise_boxes(box, wide, 28)).item() > 0.2
