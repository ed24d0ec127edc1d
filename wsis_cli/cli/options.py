"""Options shared by several verbs, defined once and repeated on each verb."""

from __future__ import annotations

from typing import Annotated

import typer

Seed = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same output.")]
Out = Annotated[str, typer.Option("--out", "-o", help="Output JSON file; '-' writes to stdout.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")]
