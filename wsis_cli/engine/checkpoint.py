"""Checkpoints: one torch file holding a dict with a ``"format"`` key, written atomically and read
with ``weights_only=True`` (so they hold only tensors, dicts, lists, str, int, float, bool, None)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wsis_cli.errors import WsisError

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a temp file in the same folder, fsync, then
    :func:`os.replace`, so a kill mid-write leaves the previous checkpoint whole."""
    import torch

    from wsis_cli.coco import write_atomic

    write_atomic(path, lambda fh: torch.save(obj, fh), what="a checkpoint file")


def load_checkpoint(path: str | os.PathLike, *, kind: str) -> dict[str, Any]:
    """Read a checkpoint onto the CPU and check that its ``"format"`` is ``kind``; a missing,
    unreadable or other file is a :class:`WsisError` naming it."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise WsisError(f"{p}: no such file" if not p.exists() else f"{p}: is not a file, expected a {kind} checkpoint")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the reason, the file is not one we can use
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise WsisError(f"{p}: not a {kind} checkpoint (cannot read it: {type(e).__name__}: {first})") from None
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt != kind:
        what = f"format {fmt!r}" if fmt is not None else f"a {type(obj).__name__} without a 'format' key"
        raise WsisError(f"{p}: not a {kind} checkpoint (it holds {what})")
    return obj
