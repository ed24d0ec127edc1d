"""Options shared by several verbs, defined once (with their checks) and repeated on each verb."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer


def _check_device(value: str) -> str:
    """``--device``: a usage error (exit 2) for a name that is not a device or a CUDA device that
    is not there. ``auto`` and ``cpu`` pass without importing torch."""
    if value in ("auto", "cpu"):
        return value
    from wsis_cli.engine.device import resolve_device
    from wsis_cli.errors import WsisError

    try:
        resolve_device(value)
    except WsisError as e:
        raise typer.BadParameter(str(e)) from None
    return value


def _check_shard(value: str | None) -> str | None:
    """``--shard K/N``: a usage error unless it parses (the verb reads it with ``parse_shard``)."""
    from wsis_cli.errors import WsisError
    from wsis_cli.jobs import parse_shard

    try:
        parse_shard(value)
    except WsisError as e:
        raise typer.BadParameter(str(e)) from None
    return value


def parse_floats(values: list[str] | None, *, option: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> list[float]:
    """``["0.3,0.5", "0.7"]`` -> ``[0.3, 0.5, 0.7]``; a bad or out-of-range number is a usage
    error (exit 2). ``None`` or ``[]`` gives ``[]``; an option given but empty is an error."""
    out: list[float] = []
    for v in values or []:
        parts = [p for p in v.split(",") if p.strip()]
        if not parts:
            raise typer.BadParameter(f"{v!r} holds no number", param_hint=option)
        for part in parts:
            try:
                x = float(part)
            except ValueError:
                raise typer.BadParameter(f"{part!r} is not a number", param_hint=option) from None
            if not math.isfinite(x) or (lo is not None and (x <= lo if lo_open else x < lo)) \
                    or (hi is not None and x > hi):
                bounds = f" in {'(' if lo_open else '['}{lo}, {hi}]" if lo is not None else ""
                raise typer.BadParameter(f"{part!r} is not a finite number{bounds}", param_hint=option)
            out.append(x)
    return out


def image_ids(text: str, option: str = "--ids") -> list[int]:
    """``--ids``: image ids as a comma-separated list (``3,7,9``) or a file of them (see
    :func:`wsis_cli.coco.read_ids`; ``-`` reads stdin); anything else is a usage error."""
    from wsis_cli.coco import read_ids

    parts = [p.strip() for p in text.split(",")]
    if all(p.lstrip("-").isdigit() for p in parts):
        return [int(p) for p in parts]
    if text == "-" or Path(text).is_file():
        return read_ids(text)
    raise typer.BadParameter(f"{text!r} is neither a comma-separated list of image ids nor a file", param_hint=option)


def options_config(cls, **options):
    """``cls(**options)``: a method's settings, whose own checks (a WsisError naming the option,
    e.g. an even --peak-kernel) are usage errors (exit 2) here."""
    from wsis_cli.errors import WsisError

    try:
        return cls(**options)
    except WsisError as e:
        raise typer.BadParameter(str(e)) from None


def choice(value: str, choices: tuple[str, ...], option: str) -> str:
    """``value`` when it is one of ``choices``, else a usage error naming ``option``."""
    if value not in choices:
        raise typer.BadParameter(f"must be one of {', '.join(choices)}", param_hint=option)
    return value


Seed = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same output.")]
Out = Annotated[str, typer.Option("--out", "-o", help="Output JSON file; '-' writes to stdout.")]
ImagesDir = Annotated[Path, typer.Option("--images", exists=True, file_okay=False,
                                          help="Folder the dataset's file_name entries are relative to.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, help="Processes working at once, this one included (default: one per core).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue a killed run from OUT.resume.jsonl; the output is identical.")]
Shard = Annotated[str | None, typer.Option("--shard", callback=_check_shard,
                                           help="Process only slice K of N of the images (K/N, 1-based); join with `wsis data merge`.")]
Device = Annotated[str, typer.Option("--device", callback=_check_device,
                                     help="auto (CUDA when present), cpu, cuda or cuda:N.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what --out holds (a run, a checkpoint, a "
                                                             "dataset folder) instead of refusing to.")]
Threads = Annotated[int | None, typer.Option("--threads", min=0, help="torch CPU threads (default: half the cores, "
                                                                     "which keeps a shared machine responsive; 0: "
                                                                     "one per core, torch's own default).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary lines on stderr (warnings "
                                                           "and errors are still shown).")]
Amp = Annotated[bool, typer.Option("--amp", help="Mixed precision (float16 autocast) on CUDA; ignored on CPU.")]
LoaderWorkers = Annotated[int, typer.Option("--workers", min=0, help="Data-loading worker processes (0: load in the "
                                                                     "main process).")]
ResumeRun = Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint at --out if it exists "
                                                          "(same options; --epochs may grow).")]
