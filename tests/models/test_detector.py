"""The detector builder: every backbone trains and predicts, model_config's checks."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.errors import WsisError
from wsis_cli.models.detector import build_detector

from conftest import one_target, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3", "resnet50"])
@pytest.mark.parametrize("boxes_only", [False, True])
def test_every_backbone_trains_and_predicts(backbone, boxes_only):
    torch.manual_seed(0)
    model = build_detector(tiny_config(backbone=backbone, boxes_only=boxes_only, iou_head=not boxes_only))
    model.train()
    losses = model([torch.rand(3, 96, 96)], [one_target(True)])
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | (set() if boxes_only else {"loss_mask"})
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 80)])[0]
    assert ("masks" in out) is not boxes_only and ("iou" in out) is not boxes_only
    if not boxes_only:
        assert out["masks"].shape[1:] == (1, 96, 80)
        assert ((out["iou"] >= 0) & (out["iou"] <= 1)).all()


def test_model_config_rejects_bad_options():
    with pytest.raises(WsisError, match="--backbone must be one of"):
        tiny_config(backbone="vgg")
    with pytest.raises(WsisError, match="--iou-target"):
        tiny_config(iou_target="log")
    with pytest.raises(WsisError, match="--boxes-only"):
        tiny_config(boxes_only=True, iou_head=True)


# ----------------------------------------------------------------------------- data rules
