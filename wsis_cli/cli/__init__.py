"""The `wsis` command line: a thin Typer layer over the library core (the only typer/rich user)."""
