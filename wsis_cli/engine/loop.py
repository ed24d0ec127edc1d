"""The training loop every trainer shares: one epoch of steps with the learning-rate schedule,
float16 autocast and gradient scaling (CUDA), optional gradient clipping, the divergence check,
loss bookkeeping and the progress callback; plus the data-loader plumbing and the interrupt note.

A trainer supplies what is its own: the batches (a DataLoader over items keyed by ``(index,
epoch)``), a ``step(batch)`` that returns the batch's losses, and ``set_lr(iteration)``. See
:func:`train_epoch`.
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from wsis_cli.errors import WsisError

__all__ = ["cosine_lr", "FailedSample", "checked_collate", "make_loader", "prefetched", "amp_on", "make_scaler", "EpochResult",
           "train_epoch", "interrupt_note", "Step", "default_threads", "set_threads",
           "keeps_torch_threads"]

_END = object()

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
                workers: int, device: torch.device) -> Iterable:
    """The batches of ``batches`` (lists of item keys), in order: a DataLoader, whose worker
    processes load ahead; without workers, read ahead on a thread (:func:`prefetched`)."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=checked_collate(collate),
                                         num_workers=workers, pin_memory=device.type == "cuda")
    return loader if workers > 0 else prefetched(loader)


def prefetched(batches: Iterable, depth: int = 2) -> Iterator:
    """``batches`` read ``depth`` ahead on a background thread, so that loading (image decoding
    releases the GIL) overlaps the step when the DataLoader has no worker processes. The order and
    the items are those of ``batches``; an error in loading is raised where its batch would be."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def fill() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(("ok", batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("ok", done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            q.put(("error", e))

    thread = threading.Thread(target=fill, name="wsis-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "error":
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def default_threads(device: torch.device) -> int:
    """torch's CPU threads when ``--threads`` is not given: half the cores this process may use
    (at least one), leaving the rest to loading and to the other jobs of a shared machine (two
    runs at two threads each on two cores ran at a third of their idle speed, one thread each at
    about twice that: benchmarks/RESULTS.md). On CUDA, torch's default."""
    import os

    if device.type == "cuda":
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def set_threads(threads: int | None, device: torch.device) -> int:
    """Set torch's CPU threads (``None``: :func:`default_threads`; 0: torch's own default, one
    per core) and return how many it uses."""
    if threads is None:
        threads = default_threads(device)
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def keeps_torch_threads(fn: Callable) -> Callable:
    """``fn`` may set torch's CPU threads (:func:`set_threads`); the caller gets its own back."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


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
    load_seconds: float = 0.0  # of ``seconds``, how long the steps waited for their batches

    @property
    def load_share(self) -> float:
        return self.load_seconds / self.seconds if self.seconds > 0 else 0.0


def cosine_lr(optimizer: torch.optim.Optimizer, total: int) -> Callable[[int], float]:
    """``set_lr(it)`` for :func:`train_epoch`: each parameter group at its ``base_lr`` times the
    cosine decay over ``total`` iterations; returns the last group's rate."""

    def set_lr(it: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * 0.5 * (1.0 + math.cos(math.pi * it / total))
        return optimizer.param_groups[-1]["lr"]

    return set_lr


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
    batches = iter(batches)
    for b in itertools.count():
        wait = time.perf_counter()
        batch = next(batches, _END)
        out.load_seconds += time.perf_counter() - wait
        if batch is _END:
            break
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
