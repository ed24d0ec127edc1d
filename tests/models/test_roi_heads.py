"""The RoI heads: box-only annotations out of the mask loss, the IoU branch's targets."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.models.detector import build_detector
from wsis_cli.models.roi_heads import _mask_ious, iou_forward, iou_inverse

from conftest import one_target, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_box_only_annotations_are_left_out_of_the_mask_loss():
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    model.train()
    x = [torch.rand(3, 96, 96)]
    heads = model.roi_heads
    boxes_only = model(x, [one_target(False)])
    assert float(boxes_only["loss_mask"].detach()) == 0.0
    model.zero_grad()
    boxes_only["loss_mask"].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in heads.mask_head.parameters())
    model.zero_grad()
    with_mask = model(x, [one_target(True)])
    assert float(with_mask["loss_mask"].detach()) > 0.1
    with_mask["loss_mask"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in heads.mask_head.parameters())


def test_mask_iou_targets_count_the_ground_truth_outside_the_box():
    gt = torch.zeros(1, 250, 250, dtype=torch.uint8)
    gt[0, 20:120, 20:220] = 1  # 100 x 200 px; the proposal below covers its left half
    props = torch.tensor([[20.0, 20.0, 120.0, 120.0]])
    logits = torch.full((1, 3, 28, 28), 10.0)  # predicts the whole box as the class-1 mask
    iou = _mask_ious(logits, [props], [torch.tensor([1])], [gt], [torch.tensor([0])], [torch.tensor([20000.0])])
    # 10000 px predicted, all inside a 20000 px mask (torchvision's target projection loses ~1 px per side)
    assert iou.tolist() == pytest.approx([0.5], abs=0.02)
    empty = _mask_ious(torch.full((1, 3, 28, 28), -10.0), [props], [torch.tensor([1])], [gt], [torch.tensor([0])],
                       [torch.tensor([20000.0])])
    assert empty.tolist() == [0.0]


@pytest.mark.parametrize("target", ["iou", "sqrt", "square"])
def test_iou_targets_invert(target):
    iou = torch.linspace(0, 1, 11)
    assert torch.allclose(iou_inverse(iou_forward(iou, target), target), iou, atol=1e-6)
    assert iou_forward(torch.tensor([0.25]), "sqrt").item() == pytest.approx(0.5)
