"""Backbone weights: none, local state dicts, wrong files, offline hub weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from wsis_cli.errors import WsisError
from wsis_cli.models.backbones import build_resnet
from wsis_cli.models.classifier import build_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(backbone="resnet18", weights="none", size=64, batch_size=4, lr=0.01, seed=3)


def test_weights_none_and_a_local_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = build_resnet("resnet18", weights=str(path))
    own = net.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    other = build_resnet("resnet18", weights="none")
    assert not torch.equal(other.conv1.weight, net.conv1.weight)
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)  # stride 16
    # a wsis-classifier checkpoint's backbone also serves as --weights
    torch.save({"model": {f"backbone.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "ck.pt")
    assert torch.equal(build_resnet("resnet18", weights=str(tmp_path / "ck.pt")).conv1.weight, ref.conv1.weight)


def test_wrong_weight_files(tmp_path):
    (tmp_path / "junk.pth").write_text("hello")
    with pytest.raises(WsisError, match="junk.pth: not a readable torch state dict"):
        build_resnet("resnet18", weights=str(tmp_path / "junk.pth"))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WsisError, match="r18.pth: .* has shape .*resnet50 needs"):
        build_resnet("resnet50", weights=str(tmp_path / "r18.pth"))
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "part.pth")
    with pytest.raises(WsisError, match="not resnet18 weights"):
        build_resnet("resnet18", weights=str(tmp_path / "part.pth"))
    with pytest.raises(WsisError, match="nowhere.pth: no such file"):
        build_resnet("resnet18", weights=str(tmp_path / "nowhere.pth"))
    with pytest.raises(WsisError, match="--backbone must be one of"):
        build_resnet("vgg16")


def test_imagenet_offline_is_a_clear_error(monkeypatch, tmp_path):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WsisError, match=r"--weights imagenet: cannot fetch https://\S+resnet18\S+ \(URLError\); "
                                        r"offline, use --weights none or a local file"):
        build_classifier(backbone="resnet18", num_classes=2, weights="imagenet")
