"""Checkpoints: one torch file holding a dict with a ``"format"`` key, written atomically and read
with ``weights_only=True`` (so they hold only tensors, dicts, lists, str, int, float, bool, None)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from wsis_cli.errors import WsisError

__all__ = ["save_checkpoint", "save_epoch", "load_checkpoint", "damaged_checkpoint", "fill_model", "load_model", "short_message"]


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a temp file in the same folder, fsync, then
    :func:`os.replace`, so a kill mid-write leaves the previous checkpoint whole."""
    import torch

    from wsis_cli.coco import write_atomic

    try:
        write_atomic(path, lambda fh: torch.save(obj, fh), what="a checkpoint file")
    except RuntimeError as e:  # torch's zip writer reports a short write (a full disk) this way
        raise WsisError(f"{path}: cannot write a checkpoint file: {_write_failure(Path(path), e)}") from None


def save_epoch(path: str | os.PathLike, *, kind: str, version: int, config: dict, train: dict, model, optimizer,
               epoch: int, history: list, **extra: Any) -> None:
    """A single-file trainer's checkpoint after ``epoch``: its format, the records that rebuild
    and resume it, the model's and the optimizer's state, ``extra`` fields (e.g. ``scaler``) and
    the history so far (:func:`save_checkpoint`)."""
    from wsis_cli import __version__

    save_checkpoint(path, {"format": kind, "version": version, "wsis_version": __version__, "config": config,
                           "train": train, "model": model.state_dict(), "optimizer": optimizer.state_dict(), **extra,
                           "epoch": epoch, "history": history})


def _write_failure(path: Path, e: BaseException) -> str:
    import shutil

    try:
        if shutil.disk_usage(path.parent).free < 64 * 2**20:
            return "no space left on device"
    except OSError:
        pass
    return short_message(e)


def short_message(e: BaseException, limit: int = 160) -> str:
    """``Type: the first line of its message``, cut at a word (with an ellipsis) past ``limit``."""
    first = (str(e).strip().splitlines() or [""])[0]
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


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
        raise WsisError(f"{p}: not a {kind} checkpoint (cannot read it: {short_message(e)})") from None
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt != kind:
        what = f"format {fmt!r}" if fmt is not None else f"a {type(obj).__name__} without a 'format' key"
        raise WsisError(f"{p}: not a {kind} checkpoint (it holds {what})")
    return obj


def damaged_checkpoint(path: str | os.PathLike, fmt: str, e: BaseException) -> WsisError:
    """The error for a checkpoint that loads but does not fit its model."""
    return WsisError(f"{path}: a damaged {fmt} checkpoint ({short_message(e)})")


def fill_model(model: Any, state: dict, path: str | os.PathLike, fmt: str) -> None:
    """Load a resumed checkpoint's ``model`` state into ``model``; one that does not fit is
    :func:`damaged_checkpoint`."""
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise damaged_checkpoint(path, fmt, e) from None


def load_model(path: str | os.PathLike, *, kind: str, version: int, build: Callable[[dict], Any],
               device: Any = "cpu") -> tuple[Any, dict]:
    """``(model in eval mode on device, config)`` from a checkpoint of ``kind``: ``build(config)``
    makes the network, the checkpoint's ``model`` state fills it. A file of another kind or
    version, or whose weights do not fit, is a :class:`WsisError` naming it."""
    from wsis_cli.engine.device import resolve_device

    state = load_checkpoint(path, kind=kind)
    if state.get("version") != version:
        raise WsisError(f"{path}: checkpoint version {state.get('version')} is not {version}")
    config = state.get("config")
    try:
        model = build(config)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError, WsisError) as e:
        raise damaged_checkpoint(path, kind, e) from None
    dev = resolve_device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), dict(config)
