"""CLI plumbing: one-line errors (exit 1), stderr console, progress bars, JSON in and out."""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import typer
from rich.console import Console

from wsis_cli.errors import WsisError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    """Print ``wsis: error: MESSAGE`` on one line to stderr and exit 1."""
    sys.stderr.write(f"wsis: error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    raise typer.Exit(code=1)


_quiet = False  # --quiet: no progress bars and no informational lines (warnings and errors stay)


def cli_errors(fn: Callable) -> Callable:
    """Turn the core's WsisError (and unreadable/unwritable files) into one line and exit 1; a
    verb's ``--quiet`` takes effect here, before it runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _quiet
        _quiet = bool(kwargs.get("quiet", False))
        try:
            return fn(*args, **kwargs)
        except WsisError as e:
            fail(str(e))
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            fail(f"{where}{e.strerror or e}")

    return wrapper


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}")


def info(message: str) -> None:
    if not _quiet:
        err_console.print(message)


@contextmanager
def progress_bar(description: str, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (only on a terminal); yields the ``progress(done, total)``
    callback the core takes. The rate counts what this run did, not what a resumed run found
    done."""
    import time

    if _quiet or not err_console.is_terminal:  # nothing to draw: not even rich.progress is imported
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None, rate="")
        start: list[float] = []  # (time, done) of the first report

        def update(done: int, total: int) -> None:
            now = time.perf_counter()
            if not start:
                start.extend((now, done))
            elapsed = now - start[0]
            rate = f"{(done - start[1]) / elapsed:.1f} {unit}/s" if elapsed > 0 else ""
            bar.update(task, completed=done, total=total, rate=rate)

        yield update


def write_output(out: str, obj: Any, *, indent: int | None = None) -> None:
    from wsis_cli.coco import write_json

    write_json(out, obj, indent=indent)
