"""Checkpoint files: atomic writes, weights-only reads, format checks."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from wsis_cli.engine.train_classifier import load_classifier
from wsis_cli.errors import WsisError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(backbone="resnet18", weights="none", size=64, batch_size=4, lr=0.01, seed=3)


def test_checkpoint_files(tmp_path):
    path = tmp_path / "sub" / "x.pt"
    save_checkpoint(path, {"format": "thing", "t": torch.arange(3), "n": None, "l": [1.5, "a", True]})
    obj = load_checkpoint(path, kind="thing")
    assert torch.equal(obj["t"], torch.arange(3)) and obj["l"] == [1.5, "a", True]
    with pytest.raises(WsisError, match=r"x.pt: not a wsis-classifier checkpoint \(it holds format 'thing'\)"):
        load_checkpoint(path, kind="wsis-classifier")
    with pytest.raises(WsisError, match="x.pt: not a wsis-classifier checkpoint"):
        load_classifier(path)
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01junk")
    with pytest.raises(WsisError, match=r"junk.pt: not a thing checkpoint \(cannot read it"):
        load_checkpoint(tmp_path / "junk.pt", kind="thing")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WsisError, match="list.pt: not a thing checkpoint .*a list without a 'format' key"):
        load_checkpoint(tmp_path / "list.pt", kind="thing")
    with pytest.raises(WsisError, match="none.pt: no such file"):
        load_checkpoint(tmp_path / "none.pt", kind="thing")
    with pytest.raises(WsisError, match="is a directory"):
        save_checkpoint(tmp_path, {"format": "thing"})
