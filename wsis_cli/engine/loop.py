"""The training loop every trainer shares: one epoch of steps with the learning-rate schedule,
float16 autocast and gradient scaling (CUDA), optional gradient clipping, the divergence check,
loss bookkeeping and the progress callback; plus the data-loader plumbing and the interrupt note.

A trainer supplies what is its own: the batches (a DataLoader over items keyed by ``(index,
epoch)``), a ``step(batch)`` that returns the batch's losses, and ``set_lr(iteration)``. See
:func:`train_epoch`.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from wsis_cli.errors import WsisError

__all__ = ["FailedSample", "checked_collate", "make_loader", "amp_on", "make_scaler", "EpochResult", "train_epoch",
           "interrupt_note", "Step"]

# step(batch) -> (losses by name, images in the batch, extra counts to sum over the epoch)
Step = Callable[[Any], "tuple[dict[str, torch.Tensor], int, dict[str, float]]"]


class FailedSample:
    """A sample that could not be read: the message travels back from a loader worker as data,
    so the error stays one line (DataLoader rewraps exceptions with their traceback)."""

    def __init__(self, message: str):
        self.message = message


def checked_collate(collate: Callable[[list], Any]) -> Callable[[list], Any]:
    """``collate`` that passes the batch's first :class:`FailedSample` on instead of collating."""

    def wrapped(items: list) -> Any:
        for it in items:
            if isinstance(it, FailedSample):
                return it
        return collate(items)

    return wrapped


def make_loader(dataset: torch.utils.data.Dataset, batches: list[list], *, collate: Callable[[list], Any],
                workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """A DataLoader that yields exactly ``batches`` (lists of item keys), in order."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=checked_collate(collate),
                                       num_workers=workers, pin_memory=device.type == "cuda")


def amp_on(amp: bool, device: torch.device, say: Callable[[str], None]) -> bool:
    """Whether float16 autocast applies: asked for and on CUDA (else a warning, and float32)."""
    if amp and device.type != "cuda":
        say(f"warning: --amp needs CUDA; training in float32 on {device.type}")
    return amp and device.type == "cuda"


def make_scaler(use_amp: bool, state: dict | None = None) -> torch.amp.GradScaler:
    """The gradient scaler (a no-op without AMP), restored from ``state`` when given."""
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if use_amp and state:
        scaler.load_state_dict(state)
    return scaler


@dataclass
class EpochResult:
    """What one epoch of :func:`train_epoch` measured: each loss summed over the images (loss x
    batch size), the images seen, the steps' extra counts, the last learning rate and the time."""

    sums: dict[str, float] = field(default_factory=dict)
    seen: int = 0
    extras: dict[str, float] = field(default_factory=dict)
    lr: float | None = None
    seconds: float = 0.0


def train_epoch(batches: Iterable, step: Step, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
                set_lr: Callable[[int], float], epoch: int, first_iter: int, total_iters: int, use_amp: bool,
                device: torch.device, clip_norm: float | None = None, hint: str = "lower --lr",
                progress: Callable[[int, int], None] | None = None) -> EpochResult:
    """Run the steps of one epoch. Iteration ``first_iter + b`` sets its learning rate with
    ``set_lr`` (which returns it), runs ``step`` under autocast when ``use_amp``, and takes an
    optimiser step on the sum of the losses (gradients clipped to ``clip_norm`` when given). A
    non-finite loss without AMP raises WsisError naming the epoch and iteration, with ``hint``;
    a :class:`FailedSample` batch raises its message. ``progress(done, total_iters)`` after each
    step."""
    t0 = time.perf_counter()
    out = EpochResult()
    for b, batch in enumerate(batches):
        if isinstance(batch, FailedSample):
            raise WsisError(batch.message)
        it = first_iter + b
        out.lr = set_lr(it)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            losses, n, extra = step(batch)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_norm)
        scaler.step(optimizer)
        scaler.update()
        value = float(loss.detach())
        if not math.isfinite(value) and not use_amp:
            raise WsisError(f"training diverged (loss {value} at epoch {epoch + 1}, iteration {b + 1}): {hint}")
        for k, v in losses.items():
            out.sums[k] = out.sums.get(k, 0.0) + float(v.detach()) * n
        for k, v in extra.items():
            out.extras[k] = out.extras.get(k, 0) + v
        out.seen += n
        if progress:
            progress(it + 1, total_iters)
    out.seconds = time.perf_counter() - t0
    return out


@contextmanager
def interrupt_note(say: Callable[[str], None], note: Callable[[], str | None]) -> Iterator[None]:
    """On Ctrl-C (or SIGTERM, which the CLI turns into one), say ``note()`` when it has something
    to say (where the finished epochs are kept), then let the interrupt go on."""
    try:
        yield
    except KeyboardInterrupt:
        message = note()
        if message:
            say(message)
        raise
