"""What a training run keeps on disk, and the checks that let ``--resume`` continue it exactly.

A run folder (``train maskrcnn``) holds ``config.json``, ``metrics.jsonl`` (one line per epoch),
``last.pt`` (everything resume needs), ``best.pt`` and ``epochs/epoch-NNN.pt``. An epoch is
committed by :func:`commit_epoch` on a background thread (:class:`EpochWriter`) while the next one
trains, ``last.pt`` last: an epoch counts as done only once all its files are on disk. A
single-file run (``train classifier``) is its checkpoint, rewritten after every epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from wsis_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from wsis_cli.errors import WsisError

__all__ = ["check_resume", "check_checkpoint_out", "resume_checkpoint", "prepare_run", "remove_stale_temps", "EpochWriter", "snapshot", "commit_epoch", "append_metrics", "run_file"]

CATEGORY_KEYS = ("category_ids", "category_names", "num_classes")


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_resume(state: dict, *, run: Path, version: int, config: dict, train: dict, model_keys: Iterable[str],
                 train_keys: Iterable[str], world: int | None = None, defaults: dict | None = None) -> None:
    """WsisError unless the checkpoint ``state`` was made by this ``version`` with the same model
    ``config`` (``model_keys``), the same data fingerprint (``train["data"]``), the same training
    options (``train_keys``) and, for DDP, the same number of processes. ``defaults``: keys added
    after a run was made, and the value a run without them had (they are filled into ``state``)."""
    for part in ("config", "train"):
        for key, value in (defaults or {}).items():
            state.setdefault(part, {})
            if key in (model_keys if part == "config" else train_keys):
                state[part].setdefault(key, value)
    if state.get("version") != version:
        raise WsisError(f"{run}: checkpoint version {state.get('version')} is not {version}; cannot resume it")
    old_cfg, old_train = state.get("config", {}), state.get("train", {})
    if old_train.get("data") != train["data"]:
        raise WsisError(f"{run}: was trained on another dataset (other images or annotations); --resume needs the "
                        "same dataset")
    for where, old, new in [*((k, old_cfg, config) for k in model_keys), *((k, old_train, train) for k in train_keys)]:
        if old.get(where) == new[where]:
            continue
        if where in CATEGORY_KEYS:
            raise WsisError(f"{run}: was trained on other categories ({old_cfg.get('category_names')}); --resume "
                            "needs the same dataset")
        raise WsisError(f"{run}: was trained with {_option(where)} {old.get(where)!r}, not {new[where]!r}; --resume "
                        "needs the same options (or --overwrite instead, to start afresh)")
    if world is not None and old_train.get("world_size", 1) != world:
        raise WsisError(f"{run}: was trained by {old_train.get('world_size', 1)} processes, not {world}; resume it "
                        "with the same number")


def check_checkpoint_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """A single-file trainer's ``--out``: not a folder; an existing file needs ``resume`` or
    ``overwrite``; temp files a killed write left beside it are removed."""
    if out.is_dir():
        raise WsisError(f"{out}: is a directory, expected a checkpoint file path")
    if out.exists() and not (resume or overwrite):
        raise WsisError(f"{out}: exists; add --resume to continue its training, or --overwrite to start afresh")
    if out.parent.is_dir():
        for tmp in out.parent.glob(f".{out.name}.*.tmp"):  # what a killed write left behind
            tmp.unlink(missing_ok=True)


def resume_checkpoint(out: Path, *, kind: str, version: int, config: dict, train: dict, model_keys: Iterable[str],
                      train_keys: Iterable[str], epochs: int, say: Callable[[str], None]) -> dict | None:
    """The single-file checkpoint ``out`` to continue from, checked by :func:`check_resume` (None:
    there is none yet, start from scratch); says how far it got and whether the schedule of
    ``epochs`` changes."""
    if not out.is_file():
        say(f"{out} does not exist yet: training from the start")
        return None
    state = load_checkpoint(out, kind=kind)
    check_resume(state, run=out, version=version, config=config, train=train, model_keys=model_keys,
                 train_keys=train_keys)
    start, planned = int(state["epoch"]), state["train"].get("epochs", int(state["epoch"]))
    if start < epochs:
        say(f"resuming {out} after epoch {start} of {planned}")
        if planned != epochs:
            say(f"the schedule changes from {planned} to {epochs} epochs: the cosine learning-rate decay is "
                f"recomputed for {epochs}")
    return state


def prepare_run(run: Path, *, kind: str, resume: bool, main: bool, say: Callable[[str], None],
                overwrite: bool = False) -> dict | None:
    """The ``last.pt`` state to resume from (None: start from scratch). A folder that is not a
    run is refused; so is a run without ``resume`` or ``overwrite`` (its epochs would be lost).
    With ``overwrite`` the ``main`` process removes the old run's checkpoints and metrics. Temp
    files a killed run left behind are removed first."""
    last = run / "last.pt"
    if main:
        remove_stale_temps(run)
    if resume and last.is_file():
        return load_checkpoint(last, kind=kind)
    if resume:
        say(f"{last} does not exist yet: training from the start")
    elif run.exists() and any(run.iterdir()) and not (run / "config.json").is_file():
        raise WsisError(f"{run}: exists and is not a wsis run folder; give a new or empty folder")
    elif (run / "config.json").is_file() and not overwrite:
        raise WsisError(f"{run}: holds a training run already; add --resume to continue it, or --overwrite to "
                        "start afresh (its checkpoints and metrics are deleted)")
    elif (run / "config.json").is_file() and main:
        say(f"{run} holds a run: starting afresh, its checkpoints and metrics are replaced")
        for old in [last, run / "best.pt", run / "metrics.jsonl", *sorted(run.glob("epochs/epoch-*.pt"))]:
            old.unlink(missing_ok=True)
    return None


def remove_stale_temps(run: Path) -> None:
    """Delete the ``.NAME.*.tmp`` files an atomic write killed halfway leaves in a run folder."""
    for tmp in [*run.glob(".*.tmp"), *run.glob("epochs/.*.tmp")]:
        tmp.unlink(missing_ok=True)


def run_file(run: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint a run folder offers (its ``which``.pt, else ``last.pt``); a file is itself."""
    p = Path(run)
    if not p.is_dir():
        return p
    for f in (p / f"{which}.pt", p / "last.pt"):
        if f.is_file():
            return f
    raise WsisError(f"{p}: not a wsis training run (no {which}.pt or last.pt)")


class EpochWriter:
    """Writes an epoch's files on a background thread while the next epoch trains; one job at a
    time, and a job's error surfaces at the next ``submit`` or ``wait``."""

    def __init__(self):
        self._pool = None
        self._job = None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsis-checkpoint")
        self._job = self._pool.submit(fn, *args)

    def wait(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.result()


def snapshot(obj: Any) -> Any:
    """``obj`` with every tensor copied to the CPU, so training can go on while it is written."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def append_metrics(path: Path, record: dict) -> None:
    """Rewrite ``metrics.jsonl`` as its lines up to this epoch plus ``record`` (atomically, so a
    resumed run never holds a duplicate or torn line)."""
    from wsis_cli.coco import write_atomic

    lines = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("epoch", 0) < record["epoch"]:
                    lines.append(line)
            except (ValueError, AttributeError):
                continue
    lines.append(json.dumps(record))
    write_atomic(path, lambda fh: fh.write("\n".join(lines) + "\n"), binary=False, what="a metrics file")


def commit_epoch(run: Path, head: dict, state: dict, *, history: list, best: dict, write_best: bool, keep: int,
                 record: dict) -> None:
    """Write the epoch's model file (the last ``keep``; -1 all, 0 none), ``best.pt`` when asked,
    the epoch's ``metrics.jsonl`` line and, last, ``last.pt`` (``head``, ``state``, history and
    best: everything resume needs). ``head`` holds the format, config and ``epoch``."""
    model_only = {**head, "model": state["model"]}
    epoch_file = None
    if keep != 0:
        folder = run / "epochs"
        folder.mkdir(exist_ok=True)
        epoch_file = folder / f"epoch-{head['epoch']:03d}.pt"
        save_checkpoint(epoch_file, model_only)
    if write_best:
        _write_best(run, epoch_file, model_only)
    if keep > 0:
        for old in sorted((run / "epochs").glob("epoch-*.pt"))[:-keep]:
            old.unlink()
    append_metrics(run / "metrics.jsonl", record)
    save_checkpoint(run / "last.pt", {**head, **state, "history": history, "best": best})


def _write_best(run: Path, epoch_file: Path | None, model_only: dict) -> None:
    if epoch_file is not None:  # the same bytes: link them instead of writing them again
        tmp = run / f".best.pt.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(epoch_file, tmp)
            os.replace(tmp, run / "best.pt")
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    save_checkpoint(run / "best.pt", model_only)
