"""Which torch device a run uses: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsis_cli.errors import WsisError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> "torch.device":
    """The :class:`torch.device` for ``name``.

    ``auto`` is the first CUDA device when one is present, else the CPU. ``cuda`` (or ``cuda:N``)
    without a usable CUDA device, and any other name, raise :class:`WsisError` (the CLI reports
    it as a usage error of ``--device``).
    """
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text[5:]
        if index and not index.isdigit():
            raise WsisError(f"{name!r} is not a device; give auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise WsisError(f"{name} was asked for but no CUDA device is available; use cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise WsisError(f"{name}: there are only {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                            f"cuda:{torch.cuda.device_count() - 1})")
        return torch.device(text)
    raise WsisError(f"{name!r} is not a device; give auto, cpu, cuda or cuda:N")
