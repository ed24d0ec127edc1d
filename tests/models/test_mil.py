"""The WSDDN head: shapes, the two softmaxes' axes, bag scores, the loss, frozen batch norms."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.models.mil import WSDDN, bag_scores, bag_softmax, build_mil, mil_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bag_softmax_sums_to_one_over_each_bag():
    logits = torch.tensor([[1.0, 0.0], [2.0, 5.0], [0.0, 0.0], [3.0, -1.0], [100.0, 1.0]])
    bag = torch.tensor([0, 0, 1, 1, 2])
    p = bag_softmax(logits, bag, 3)
    sums = torch.zeros(3, 2).index_add(0, bag, p)
    assert torch.allclose(sums, torch.ones(3, 2))
    assert torch.allclose(p[:2, 0], torch.softmax(logits[:2, 0], 0)) and p[4].tolist() == [1.0, 1.0]
    assert torch.isfinite(p).all()  # large logits do not overflow


def test_model_shapes_and_axes():
    torch.manual_seed(0)
    model = build_mil(backbone="resnet18", num_classes=3, weights="none", reduce=16, hidden=32).eval()
    images = torch.rand(2, 3, 64, 64)
    rois = torch.tensor([[0, 0, 0, 32, 32], [0, 10, 10, 60, 60], [0, 5, 5, 20, 40],
                         [1, 0, 0, 64, 64], [1, 30, 30, 50, 50]], dtype=torch.float32)
    bag = torch.tensor([0, 0, 1, 2, 2])
    with torch.no_grad():
        x_cls, x_det = model.proposal_logits(images, rois)
        x, phi = model(images, rois, bag, 3)
    assert x_cls.shape == x_det.shape == x.shape == (5, 3) and phi.shape == (3, 3)
    det = bag_softmax(x_det, bag, 3)
    assert torch.allclose(torch.zeros(3, 3).index_add(0, bag, det), torch.ones(3, 3), atol=1e-6)  # over a bag
    assert torch.allclose(x / det, torch.softmax(x_cls, dim=1), atol=1e-5)  # cls: over the classes
    assert torch.allclose(phi, bag_scores(x, bag, 3)) and (phi >= 0).all() and (phi <= 1 + 1e-6).all()
    assert torch.allclose(phi[1], torch.softmax(x_cls[2], 0))  # a one-proposal bag: phi = its class softmax


def test_loss_is_bce_against_the_bag_label():
    phi = torch.tensor([[0.9, 0.2], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log = torch.log
    expected = -(log(torch.tensor(0.9)) + log(torch.tensor(0.8)) + 2 * log(torch.tensor(1 - 1e-6))) / 2
    assert mil_loss(phi, labels) == pytest.approx(float(expected), rel=1e-5)
    assert torch.isfinite(mil_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])))


def test_gradients_reach_both_streams_and_the_trunk():
    torch.manual_seed(0)
    model = build_mil(backbone="resnet18", num_classes=2, weights="none", reduce=8, hidden=16).train()
    rois = torch.tensor([[0, 0, 0, 32, 32], [0, 16, 16, 64, 64]], dtype=torch.float32)
    _, phi = model(torch.rand(1, 3, 64, 64), rois, torch.tensor([0, 0]), 1)
    mil_loss(phi, torch.tensor([[1.0, 0.0]])).backward()
    for part in (model.cls, model.det, model.fc, model.backbone.conv1):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_frozen_batch_norms_stay_in_eval_mode(tmp_path):
    sd_path = tmp_path / "seg.pt"
    trunk = build_mil(backbone="resnet18", num_classes=2, weights="none").backbone
    torch.save({f"backbone.{k}": v for k, v in trunk.state_dict().items()}, sd_path)  # a segmenter-style dict
    model = build_mil(backbone="resnet18", num_classes=2, weights=str(sd_path), reduce=8, hidden=16)
    assert model.frozen_bn
    model.train()
    assert model.training and not model.backbone.bn1.training and model.fc.training
    for k, v in trunk.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v)
    plain = build_mil(backbone="resnet18", num_classes=2, weights="none").train()
    assert not plain.frozen_bn and plain.backbone.bn1.training
    assert isinstance(plain, WSDDN)
