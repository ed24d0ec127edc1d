"""CLI plumbing: one-line errors, --quiet, and progress bars that draw only on a terminal."""

from __future__ import annotations

import io

import pytest
import typer
from rich.console import Console

from wsis_cli.cli import io as cli_io
from wsis_cli.cli.app import app
from wsis_cli.errors import InputError


def test_errors_are_one_line_and_exit_1(capsys):
    @cli_io.cli_errors
    def verb(quiet: bool = False):
        raise InputError("a.json", "bad\n  thing", "image 3")

    with pytest.raises(typer.Exit) as e:
        verb()
    assert e.value.exit_code == 1
    assert capsys.readouterr().err == "wsis: error: a.json: image 3: bad thing\n"


def test_progress_draws_on_a_terminal_only(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli_io, "err_console", Console(file=screen, force_terminal=True, width=100, highlight=False))
    monkeypatch.setattr(cli_io, "_quiet", False)
    with cli_io.progress_bar("crunching", unit="box") as progress:
        for k in range(1, 4):
            progress(k, 3)
    assert "crunching" in screen.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(cli_io, "err_console", Console(file=quiet, force_terminal=False))
    with cli_io.progress_bar("crunching") as progress:
        progress(1, 1)
    assert quiet.getvalue() == ""


def test_quiet_silences_progress_and_summaries_but_not_warnings(runner, tmp_path, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli_io, "err_console", Console(file=screen, force_terminal=True, width=100, highlight=False))
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--n", "2", "--size", "32", "--quiet"])
    assert r.exit_code == 0 and screen.getvalue() == "" and (tmp_path / "d" / "gt.json").exists()
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "e"), "--n", "2", "--size", "32"])
    assert r.exit_code == 0 and "synthesising" in screen.getvalue() and "wrote 2 images" in screen.getvalue()
    gt = (tmp_path / "d" / "gt.json").read_text()
    (tmp_path / "p.json").write_text(gt)
    screen.truncate(0)
    screen.seek(0)
    r = runner.invoke(app, ["data", "merge", str(tmp_path / "d" / "gt.json"), str(tmp_path / "p.json"), "-q", "--out",
                            str(tmp_path / "m.json")])
    assert r.exit_code == 0 and screen.getvalue() == ""  # no "N images, M annotations" line
