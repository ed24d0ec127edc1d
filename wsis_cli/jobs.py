"""Running a job image by image: shards, a process pool, and resumable progress.

Every per-image verb (``pseudolabel grabcut`` first) uses the same three pieces:

- :func:`shard_images`: ``--shard K/N`` keeps the K-th of N deterministic slices of the images
  (1-based; images ordered by id, image ``i`` of that order goes to slice ``i mod N``), so a
  pool of millions can run as a SLURM array; ``wsis data merge`` joins the outputs.
- :class:`ResumeLog`: a side file next to the output, ``OUT.resume.jsonl``: a header line
  with the run's fingerprint (verb, options, input), then one line per finished image. With
  ``--resume`` a restarted run skips the images already there; the output is assembled in the
  dataset's order, so it is identical to an uninterrupted run's.
- :func:`run_images`: maps a top-level function over the images on ``workers`` processes (this
  one and a pool of ``workers - 1``; in-process for 1), logging each result as it arrives; an
  image the caller cuts into :class:`Parts` (a big one) runs as pieces on all of them, joined here.
- :func:`run_job`: the life of a resumable run writing one output file: its log is opened
  (refused when an interrupted run's log is there and ``resume`` is off), the run's result
  written, and the log removed on success, kept on an error or an interrupt (with a note saying
  where the finished images are) or removed when nothing was finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, TypeVar

from wsis_cli.errors import WsisError

__all__ = ["parse_shard", "shard_images", "fingerprint", "ResumeLog", "Parts", "run_images", "default_workers",
           "OptionError", "Job", "resume_log_path", "run_job"]

T = TypeVar("T")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``; None for None."""
    if text is None:
        return None
    try:
        k, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise WsisError(f"--shard must look like K/N (e.g. 3/8), got {text!r}") from None
    if not 1 <= k <= n:
        raise WsisError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def shard_images(images: list[dict], shard: tuple[int, int] | None) -> list[dict]:
    """The images of slice K of N (all of them for None), in their original order."""
    if shard is None:
        return list(images)
    k, n = shard
    order = sorted(range(len(images)), key=lambda i: images[i]["id"])
    keep = set(order[k - 1::n])
    return [im for i, im in enumerate(images) if i in keep]


def fingerprint(verb: str, options: dict, payload: Any) -> str:
    """A digest of what determines a run's output, so a resume never mixes two runs."""
    h = hashlib.sha256()
    h.update(json.dumps([verb, options], sort_keys=True, default=str).encode())
    h.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return h.hexdigest()


class ResumeLog:
    """Finished images of a run, one JSON line each, after a header with the run's fingerprint."""

    def __init__(self, path: str | os.PathLike, run_id: str, *, resume: bool):
        self.path = Path(path)
        self.run_id = run_id
        self.done: dict[int, Any] = {}
        good_bytes = 0
        if resume and self.path.is_file():
            with open(self.path, "rb") as fh:
                lines = fh.read().split(b"\n")
            try:
                header = json.loads(lines[0])
            except (ValueError, IndexError):  # not JSON, or not text at all (UnicodeDecodeError)
                header = None
            if not isinstance(header, dict) or header.get("run") != run_id:
                raise WsisError(f"{self.path}: this resume file belongs to another run (other input or "
                                "options); delete it, or run without --resume")
            good_bytes = len(lines[0]) + 1
            for line in lines[1:-1]:  # only lines that reached their newline; the rest was cut short
                try:
                    rec = json.loads(line)
                    self.done[int(rec["image_id"])] = rec["result"]
                except (KeyError, TypeError, ValueError):
                    break  # a line cut short when the run was killed (or garbled): redo from there
                good_bytes += len(line) + 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if good_bytes:
            with open(self.path, "r+b") as fh:
                fh.truncate(good_bytes)
            self._fh = open(self.path, "a", encoding="utf-8")
        else:
            self._fh = open(self.path, "w", encoding="utf-8")
            self._fh.write(json.dumps({"run": run_id}) + "\n")
            self._fh.flush()

    def append(self, image_id: int, result: Any) -> None:
        self._fh.write(json.dumps({"image_id": image_id, "result": result}) + "\n")
        self._fh.flush()
        self.done[image_id] = result

    def close(self, *, remove: bool) -> None:
        self._fh.close()
        if remove:
            self.path.unlink(missing_ok=True)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already
    _die_with_parent()


def _ready() -> None:
    """A pool's first task: submitted once per worker so that all of them start at once."""


@contextmanager
def _main_hidden():
    """Spawned workers run the parent's main script again, as ``__mp_main__``, unless it is a
    package's ``__main__``; the ``wsis`` console script imports the whole CLI at its top (typer,
    rich, every verb), which a worker never needs: the pool's functions are wsis_cli's. When the
    main script is that console script (its ``main`` is the CLI's), hide it from multiprocessing
    while the workers start; any other script stays visible (it may define the pool's functions)."""
    main = sys.modules.get("__main__")
    app = sys.modules.get("wsis_cli.cli.app")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    ours = app is not None and main is not None and main.__dict__.get("main") is getattr(app, "main", None)
    if not ours or "__file__" not in saved:  # another script may define the functions the pool runs: keep it
        yield
        return
    try:
        main.__spec__ = None
        del main.__file__
        yield
    finally:
        main.__dict__.update(saved)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when its parent dies (killed, crashed), so a pool never
    outlives the run; elsewhere a no-op."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


@dataclass
class Parts:
    """One image's work cut into pieces for the pool: ``fn(piece)`` runs in a worker for each of
    ``pieces`` (``fn`` top-level and the pieces picklable, at least one), then ``join(results)``,
    in the parent with the pieces' results in their order, gives the image's result."""

    fn: Callable[[Any], Any]
    pieces: list
    join: Callable[[list], Any]
    threads: bool = False  # fn releases the GIL (C++ work): a lone image runs its pieces on threads here


def run_images(fn: Callable[[Any], Any], tasks: Iterable[tuple[int, Any]], *, workers: int = 1,
               log: ResumeLog | None = None, progress: Callable[[int, int], None] | None = None,
               total: int | None = None, check: Callable[[Any, Any], bool] | None = None,
               split: Callable[[Any], Parts | None] | None = None) -> dict[int, Any]:
    """``{image_id: fn(payload)}`` over ``tasks`` = ``(image_id, payload)``, skipping the
    images ``log`` already holds whose result passes ``check(payload, result)`` (a record of
    another shape is done again). ``fn`` must be a top-level function (it is pickled).

    With ``workers > 1``, ``split(payload)`` may cut an image into :class:`Parts` (None: keep it
    whole), so one big image keeps every worker busy; its result is logged once joined. ``fn``
    and the joined parts must give the same result: in-process (1 worker) images stay whole."""
    tasks = list(tasks)
    payloads = dict(tasks)
    results: dict[int, Any] = {i: r for i, r in (log.done.items() if log else ())
                               if i in payloads and (check is None or check(payloads[i], r))}
    todo = [(i, p) for i, p in tasks if i not in results]
    n_total = (total if total is not None else len(todo) + len(results))
    done = len(results)
    if progress:
        progress(done, n_total)

    def record(image_id: int, result: Any) -> None:
        nonlocal done
        results[image_id] = result
        if log:
            log.append(image_id, result)
        done += 1
        if progress:
            progress(done, n_total)

    parts = split(todo[0][1]) if workers > 1 and len(todo) == 1 and split is not None else None
    if parts is not None and parts.threads:  # one image: no process to start, no picture to decode again
        record(todo[0][0], _run_threads(parts, workers))
        return results
    if workers <= 1 or not todo or (len(todo) == 1 and parts is None):
        for image_id, payload in todo:
            record(image_id, fn(payload))
        return results
    _run_pool(_units(fn, todo, split), workers=workers, record=record)
    return results


def _run_threads(parts: Parts, workers: int) -> Any:
    """``parts``' result, its pieces run on ``workers`` threads of this process (OpenCV's own
    threads off meanwhile: one per core already)."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    ex = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [ex.submit(parts.fn, piece) for piece in parts.pieces]
        done = [f.result() for f in futures]
    except BaseException:  # an error in a piece, or an interrupt: drop the pieces not yet started
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        cv2.setNumThreads(threads)
    ex.shutdown()
    return parts.join(done)


def _units(fn: Callable[[Any], Any], todo: list[tuple[int, Any]], split: Callable[[Any], Parts | None] | None):
    """The pool's work, lazily: ``(image_id, function, argument, parts)``, one per whole image
    (``parts`` None) or per piece of a split one (``parts``: ``(Parts, piece index)``)."""
    for image_id, payload in todo:
        parts = split(payload) if split is not None else None
        if parts is None:
            yield image_id, fn, payload, None
            continue
        for k, piece in enumerate(parts.pieces):
            yield image_id, parts.fn, piece, (parts, k)


def _run_pool(units, *, workers: int, record: Callable[[int, Any], None]) -> None:
    """Run ``units`` (:func:`_units`) on ``workers`` processes: this one and a pool of
    ``workers - 1``, each pool process fed one unit at a time by a thread of its own (so a
    worker never holds a queue of units the others could take, and all finish together).
    Each image is ``record``-ed here when its result, or the last of its pieces, arrives
    (pieces joined in order)."""
    import multiprocessing as mp
    import queue
    import threading

    import cv2

    ctx = mp.get_context("spawn")  # no fork of a process holding locks (progress thread, BLAS)
    ex = ProcessPoolExecutor(max_workers=workers - 1, mp_context=ctx, initializer=_worker_init)
    try:
        with _main_hidden():  # start every worker now: they boot while this process reads the first image
            for _ in range(workers - 1):
                ex.submit(_ready)
    except BaseException:
        _stop_now(ex)
        raise
    lock, stop, arrived = threading.Lock(), threading.Event(), queue.SimpleQueue()
    gathered: dict[int, list] = {}  # image id -> its pieces' results so far (None: not yet)

    def next_unit():
        with lock:
            return None if stop.is_set() else next(units, None)

    def feed() -> None:  # one per pool process: its next unit, when it is done with the last
        try:
            while (unit := next_unit()) is not None:
                fut = ex.submit(unit[1], unit[2])
                fut.exception()  # wait for it; an error in it is raised where its result is taken
                arrived.put((unit, fut))
        except BaseException as e:  # noqa: BLE001 - the pool broke, or it is being stopped
            arrived.put(e)
        finally:
            arrived.put(None)

    def take(unit: tuple, result: Any) -> None:
        image_id, _, _, where = unit
        if where is None:
            record(image_id, result)
            return
        parts, k = where
        got = gathered.setdefault(image_id, [None] * len(parts.pieces))
        got[k] = (result,)
        if all(g is not None for g in got):
            del gathered[image_id]
            record(image_id, parts.join([g[0] for g in got]))

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one process per core already
    feeders = [threading.Thread(target=feed, daemon=True) for _ in range(workers - 1)]
    for t in feeders:
        t.start()
    running = len(feeders)
    try:
        while running:
            try:
                item = arrived.get_nowait()  # the pool's results first
            except queue.Empty:
                unit = next_unit()
                if unit is not None:  # then a unit of our own, while there are any
                    take(unit, unit[1](unit[2]))
                    continue
                try:
                    item = arrived.get(timeout=0.2)  # nothing left to start: wait for the pool
                except queue.Empty:
                    continue
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                take(item[0], item[1].result())
    except BaseException:
        stop.set()
        _stop_now(ex)
        raise
    finally:
        cv2.setNumThreads(threads)
    ex.shutdown(wait=True)


def _stop_now(ex: ProcessPoolExecutor) -> None:
    """An error or an interrupt: drop the queue and stop the workers now, not after their task.
    Then wait (briefly) for the pool's manager thread to see them gone and close its wake-up pipe:
    left running, it can close that pipe while Python 3.11's exit hook writes to it, which prints
    an "OSError: Bad file descriptor" traceback as the process exits."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    manager = getattr(ex, "_executor_manager_thread", None)
    if manager is not None:
        manager.join(timeout=5)


class OptionError(WsisError):
    """A wrong ``--out`` / ``--resume`` combination; ``option`` names the option (the CLI reports
    it as a usage error of that option)."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


def resume_log_path(out: str, *, resume: bool = False) -> Path | None:
    """Where a run writing ``out`` logs its finished images: ``OUT.resume.jsonl`` for a regular
    output file; None for stdout and special files (/dev/null, pipes).

    Raises :class:`OptionError` for a folder ``out``, or ``resume`` without a log path, and
    WsisError when the log of an interrupted run is there and ``resume`` is off.
    """
    if out == "-":
        path = None
    elif Path(out).is_dir():
        raise OptionError(f"{out} is a folder; give an output file", "--out")
    elif Path(out).exists() and not Path(out).is_file():
        path = None
    else:
        path = Path(f"{out}.resume.jsonl")
    if resume and path is None:
        raise OptionError("--resume keeps its progress next to the output: give --out FILE (a regular file)",
                          "--resume")
    if path is not None and path.exists() and not resume:
        raise WsisError(f"{path} holds an interrupted run: add --resume to continue it, or delete it to start afresh")
    return path


@dataclass
class Job(Generic[T]):
    """A resumable run: ``run(log)`` does the work (``log``: the :class:`ResumeLog`, or None);
    ``verb``, ``options`` and ``payload`` are what determines its output (fingerprinted, so a
    resume never mixes two runs); ``total``: how many images it has."""

    verb: str
    options: dict
    payload: Any
    total: int
    run: Callable[[ResumeLog | None], T]


def run_job(job: Job[T], *, out: str, resume: bool, write: Callable[[T], None],
            note: Callable[[str], None] = lambda m: None) -> T:
    """Run ``job`` and ``write`` its result (to ``out``), logging finished images next to ``out``
    (:func:`resume_log_path`). On success the log is removed; on an error or an interrupt it is
    kept for ``resume`` (removed when nothing was finished) and the error says where (a
    WsisError stays one line; other exceptions get ``note``). ``note`` also says how much a
    resumed run found done."""
    log_path = resume_log_path(out, resume=resume)
    log = None
    if log_path is not None:
        log = ResumeLog(log_path, fingerprint(job.verb, job.options, job.payload), resume=resume)
        if resume and log.done:
            note(f"resuming: {len(log.done)} of {job.total} images already done")
    try:
        result = job.run(log)
        write(result)
    except BaseException as e:
        if log is None:
            raise
        log.close(remove=False)  # keep the finished images for --resume
        if not log.done:
            log.path.unlink(missing_ok=True)
            raise
        kept = f"{len(log.done)} finished images are kept in {log.path}: rerun with --resume to continue"
        if isinstance(e, WsisError):  # still one line: the fault, then where the work is kept
            raise WsisError(f"{e} ({kept})") from None
        note(kept)
        raise
    if log is not None:
        log.close(remove=True)
    return result
