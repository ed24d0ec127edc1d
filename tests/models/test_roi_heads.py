"""The RoI heads: box-only annotations out of the mask loss (or under BoxInst's terms), ignore regions
(and the RPN's), the IoU branch's targets."""

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


# ----------------------------------------------------------------------------- ignore regions
def _heads_sampling_everything():
    heads = build_detector(tiny_config()).roi_heads
    heads.fg_bg_sampler.batch_size_per_image = 1000  # sample every labelled proposal: only ignoring leaves one out
    heads.fg_bg_sampler.positive_fraction = 1.0
    return heads


def test_ignore_boxes_keep_background_proposals_out_of_sampling():
    heads = _heads_sampling_everything()
    kept, ignore = [10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 90.0, 90.0]
    proposals = torch.tensor([
        [11.0, 11.0, 40.0, 40.0],   # 0: the kept instance (foreground)
        [60.0, 60.0, 90.0, 90.0],   # 1: exactly the ignore box
        [65.0, 70.0, 80.0, 85.0],   # 2: a part of it, all inside (IoU 0.25): ignored too
        [50.0, 50.0, 80.0, 80.0],   # 3: 4/9 of it inside the ignore box: stays background
        [0.0, 60.0, 20.0, 90.0],    # 4: far from both: background
        [10.0, 10.0, 40.0, 41.0],   # 5: the kept instance again, though overlapping nothing ignored
    ])
    target = {"boxes": torch.tensor([kept]), "labels": torch.tensor([2]), "masks": torch.zeros(1, 96, 96),
              "has_mask": torch.tensor([True])}

    def sampled(t):
        torch.manual_seed(0)
        props, matched, labels, _ = heads.select_training_samples([proposals.clone()], [t])
        return {tuple(p.tolist()): int(lab) for p, lab in zip(props[0], labels[0])}

    plain = sampled(target)
    assert [plain[tuple(p.tolist())] for p in proposals] == [2, 0, 0, 0, 0, 2]
    assert plain[tuple(kept)] == 2  # the ground-truth box joins the proposals
    ignored = sampled({**target, "ignore": torch.tensor([ignore])})
    assert tuple(proposals[1].tolist()) not in ignored and tuple(proposals[2].tolist()) not in ignored
    assert set(plain) - set(ignored) == {tuple(proposals[1].tolist()), tuple(proposals[2].tolist())}
    assert all(ignored[k] == plain[k] for k in ignored)
    # an ignore box over the kept instance leaves its foreground proposals foreground
    over = sampled({**target, "ignore": torch.tensor([[0.0, 0.0, 50.0, 50.0]])})
    assert over[tuple(proposals[0].tolist())] == 2 and over[tuple(proposals[5].tolist())] == 2
    # an image whose only instance is ignored: its background elsewhere still trains
    only = sampled({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                    "masks": torch.zeros(0, 96, 96), "has_mask": torch.zeros(0, dtype=torch.bool),
                    "ignore": torch.tensor([ignore])})
    assert set(only.values()) == {0} and tuple(proposals[4].tolist()) in only
    assert tuple(proposals[1].tolist()) not in only


def test_inside_fraction_and_the_rpn_ignores_anchors_in_ignore_boxes():
    from wsis_cli.models.rpn import IGNORE_INSIDE, inside_fraction

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                          [2.0, 2.0, 2.0, 2.0]])
    regions = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    assert inside_fraction(boxes, regions).tolist() == [1.0, 0.5, 0.0, 1.0]
    assert inside_fraction(boxes, regions[:0]).tolist() == [0.0] * 4
    assert IGNORE_INSIDE == 0.5

    rpn = build_detector(tiny_config()).rpn
    anchors = [torch.tensor([[10.0, 10.0, 40.0, 40.0],     # the kept instance: object
                             [62.0, 62.0, 86.0, 86.0],     # inside the ignore box: ignored
                             [0.0, 70.0, 20.0, 90.0]])]    # background
    target = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
    labels, _ = rpn.assign_targets_to_anchors(anchors, [target])
    assert labels[0].tolist() == [1.0, 0.0, 0.0]
    labels, _ = rpn.assign_targets_to_anchors(anchors, [{**target, "ignore": torch.tensor([[60.0, 60.0, 90.0, 90.0]])}])
    assert labels[0].tolist() == [1.0, -1.0, 0.0]


def test_ignore_boxes_are_scaled_with_the_image():
    torch.manual_seed(0)
    model = build_detector(tiny_config())  # 96 px: a 48 px image is scaled by 2
    model.train()
    seen = []
    assign = model.rpn.assign_targets_to_anchors
    model.rpn.assign_targets_to_anchors = lambda anchors, targets: seen.append(targets[0]["ignore"]) or \
        assign(anchors, targets)
    target = {"boxes": torch.tensor([[5.0, 5.0, 20.0, 20.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 48, 48, dtype=torch.uint8), "has_mask": torch.tensor([False]),
              "ignore": torch.tensor([[25.0, 25.0, 45.0, 40.0]])}
    losses = model([torch.rand(3, 48, 48)], [target])
    assert torch.allclose(seen[0], torch.tensor([[50.0, 50.0, 90.0, 80.0]]))
    assert target["ignore"].tolist() == [[25.0, 25.0, 45.0, 40.0]]  # the caller's target is left alone
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------- BoxInst
def test_boxinst_trains_the_mask_head_on_box_only_annotations():
    torch.manual_seed(0)
    model = build_detector(tiny_config(box_loss="boxinst"))
    model.train()
    heads = model.roi_heads
    assert heads.box_loss == "boxinst" and heads.wants_images and int(heads.boxinst_iter) == 0
    x = [torch.rand(3, 96, 96)]
    losses = model(x, [one_target(False)])
    assert {"loss_mask", "loss_projection", "loss_pairwise"} <= set(losses)
    assert float(losses["loss_mask"].detach()) == 0.0  # no annotation with a mask
    assert float(losses["loss_projection"].detach()) > 0.0
    assert 0.0 < float(losses["loss_pairwise"].detach()) < 0.01  # at 1/1000 of its weight in the first iteration
    assert int(heads.boxinst_iter) == 1 and "roi_heads.boxinst_iter" in model.state_dict()
    model.zero_grad()
    (losses["loss_projection"] + losses["loss_pairwise"]).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in heads.mask_head.parameters())
    # an annotation with a mask keeps the ordinary mask loss and takes no box term
    with_mask = model(x, [one_target(True)])
    assert float(with_mask["loss_mask"].detach()) > 0.1 and float(with_mask["loss_projection"].detach()) == 0.0
    # the heads refuse to run BoxInst without the image batch
    with pytest.raises(ValueError, match="needs the image batch"):
        heads._boxinst_losses(torch.zeros(0, 3, 28, 28), [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)],
                              [one_target(False)], None)


def test_a_config_without_box_loss_builds_the_old_heads():
    config = tiny_config()
    assert config["box_loss"] == "none"
    del config["box_loss"]  # a config.json written before --box-loss
    model = build_detector(config)
    assert model.roi_heads.box_loss == "none" and not model.roi_heads.wants_images
    assert not any("boxinst" in k for k in model.state_dict())
    from wsis_cli.errors import WsisError

    with pytest.raises(WsisError, match="--box-loss must be one of none, boxinst, got 'x'"):
        tiny_config(box_loss="x")
    with pytest.raises(WsisError, match="--box-loss boxinst trains the mask head; it cannot go with --boxes-only"):
        tiny_config(box_loss="boxinst", boxes_only=True)
