"""Random generators keyed by ``(seed, epoch, index, stream)``: any process, worker or resumed run
draws the same numbers for the same key, which is what makes training exact across ``--resume``,
``--workers`` and DDP ranks."""

from __future__ import annotations

import numpy as np

__all__ = ["keyed_rng", "torch_seed"]


def keyed_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """A generator that depends only on its key (a seed of any sign is split into two
    non-negative 32-bit words, as numpy needs)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, epoch, index, stream])


def torch_seed(seed: int, epoch: int, *, stream: int, index: int = 0) -> int:
    """torch's seed before epoch ``epoch`` (-1: before the model is built) for process ``index``."""
    return int(keyed_rng(seed, epoch + 1, index, stream).integers(2**62))
