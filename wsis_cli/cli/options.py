"""Options shared by several verbs, defined once and repeated on each verb."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Seed = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same output.")]
Out = Annotated[str, typer.Option("--out", "-o", help="Output JSON file; '-' writes to stdout.")]
ImagesDir = Annotated[Path, typer.Option("--images", exists=True, file_okay=False,
                                          help="Folder the dataset's file_name entries are relative to.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes (default: one per core).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue a killed run from OUT.resume.jsonl; the output is identical.")]
Shard = Annotated[str | None, typer.Option("--shard", help="Process only slice K of N of the images (K/N, 1-based); join with `wsis data merge`.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
