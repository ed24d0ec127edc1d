"""The segmenter (CCGR's SS branch): shapes, K + 1 planes, pyramid pooling, trunk init from its checkpoint."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.errors import WsisError
from wsis_cli.models.backbones import build_resnet
from wsis_cli.models.segmenter import BINS, PyramidPooling, Segmenter, build_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (33, 47)])
def test_logits_have_k_plus_one_planes_at_the_input_size(hw):
    torch.manual_seed(0)
    model = build_segmenter("resnet18", num_classes=3, weights="none")
    x = torch.rand(2, 3, *hw)
    y = model(x)
    assert y.shape == (2, 4, *hw) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert model.num_classes == 3 and model.classifier.out_channels == 4


def test_a_batch_of_one_trains(tmp_path):
    # the 1x1 bin holds one value per channel: GroupNorm, not BatchNorm, in the head
    torch.manual_seed(0)
    model = build_segmenter("resnet18", num_classes=1, weights="none").train()
    logits = model(torch.rand(1, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(1, 32, 32, dtype=torch.long))
    loss.backward()
    assert model.classifier.weight.grad is not None and model.backbone.conv1.weight.grad is not None


def test_pyramid_pooling_shapes_and_bins():
    ppm = PyramidPooling(16, 4)
    assert ppm.bins == BINS == (1, 2, 3, 6)
    f = torch.rand(2, 16, 7, 9)
    out = ppm(f)
    assert out.shape == (2, 16 + 4 * 4, 7, 9) and ppm.out_channels == 32
    assert torch.equal(out[:, :16], f)  # the features pass through
    # the 1x1 level is constant over the map
    level1 = out[:, 16:20]
    assert torch.allclose(level1, level1[:, :, :1, :1].expand_as(level1))


def test_no_classes_is_an_error():
    with pytest.raises(ValueError, match="num_classes"):
        Segmenter(build_resnet("resnet18"), 0)
    with pytest.raises(WsisError, match="--backbone"):
        build_segmenter("vgg16", num_classes=2)


def test_trunk_of_a_saved_checkpoint_inits_another_resnet(tmp_path):
    torch.manual_seed(1)
    model = build_segmenter("resnet18", num_classes=2, weights="none")
    path = tmp_path / "seg.pt"
    torch.save({"format": "wsis-segmenter", "config": {}, "model": model.state_dict(), "optimizer": {}}, path)
    trunk = build_resnet("resnet18", weights=str(path))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(trunk.state_dict()[k], v), k
    # the head's tensors (ppm., bottleneck., skip., fuse., classifier.) are not mistaken for the trunk's
    again = build_segmenter("resnet18", num_classes=5, weights=str(path))
    assert torch.equal(again.backbone.layer4[1].conv2.weight, model.backbone.layer4[1].conv2.weight)
    with pytest.raises(WsisError, match="resnet50 needs"):
        build_resnet("resnet50", weights=str(path))
