"""What the trainers share: random generators keyed by (seed, epoch, index, stream), a data-loader
sample that carries an error back as data, and the error for an unusable checkpoint."""

from __future__ import annotations

import os

import numpy as np

from wsis_cli.errors import WsisError

__all__ = ["keyed_rng", "FailedSample", "damaged_checkpoint"]


def keyed_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """A generator that depends only on its key, so any process draws the same numbers for it
    (a seed of any sign is split into two non-negative 32-bit words, as numpy needs)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, epoch, index, stream])


class FailedSample:
    """A sample that could not be read: the message travels back from a loader worker as data,
    so the error stays one line (DataLoader rewraps exceptions with their traceback)."""

    def __init__(self, message: str):
        self.message = message


def damaged_checkpoint(path: str | os.PathLike, fmt: str, e: BaseException) -> WsisError:
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return WsisError(f"{path}: a damaged {fmt} checkpoint ({type(e).__name__}: {first})")
