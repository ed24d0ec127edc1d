"""Device names: auto, cpu, cuda, cuda:N."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.engine.device import resolve_device
from wsis_cli.errors import WsisError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(backbone="resnet18", weights="none", size=64, batch_size=4, lr=0.01, seed=3)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(WsisError, match=f"{name} was asked for but no CUDA device is available"):
            resolve_device(name)
    for name in ("gpu", "cuda:x", ""):
        with pytest.raises(WsisError, match="is not a device; give auto, cpu, cuda or cuda:N"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("CUDA:0") == torch.device("cuda:0")
    with pytest.raises(WsisError, match="only 1 CUDA devices"):
        resolve_device("cuda:1")
