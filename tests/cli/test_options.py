"""The shared options: --device and --shard check themselves, number lists, --ids lists or files."""

from __future__ import annotations

import pytest
import typer

from wsis_cli.cli.app import app
from wsis_cli.cli.options import choice, image_ids, parse_floats


def test_device_and_shard_are_usage_errors(runner, tmp_path):
    for args, hint in ((["--device", "gpu"], "--device"), (["--shard", "3/2"], "--shard"),
                       (["--shard", "x"], "--shard")):
        (tmp_path / "cls.pt").write_bytes(b"")
        r = runner.invoke(app, ["pseudolabel", "prm", "il.json", "--images", str(tmp_path), "--model",
                                str(tmp_path / "cls.pt"), *args], env={"COLUMNS": "200"})
        assert r.exit_code == 2 and hint in r.output, r.output


def test_a_cuda_device_without_cuda_is_a_usage_error(runner, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = runner.invoke(app, ["predict", str(tmp_path), "--images", str(tmp_path), "--device", "cuda"],
                      terminal_width=200)
    assert r.exit_code == 2 and "no CUDA device is available" in " ".join(r.output.replace("│", " ").split())


def test_parse_floats():
    assert parse_floats(["0.3,0.5", "0.7"], option="--x") == [0.3, 0.5, 0.7]
    assert parse_floats(None, option="--x") == []
    for bad in (["a"], [","], ["nan"], ["2"]):
        with pytest.raises(typer.BadParameter):
            parse_floats(bad, option="--x", lo=0.0, hi=1.0)
    with pytest.raises(typer.BadParameter):
        parse_floats(["0"], option="--x", lo=0.0, hi=1.0, lo_open=True)


def test_image_ids_from_a_list_or_a_file(tmp_path):
    assert image_ids("3, 7,9") == [3, 7, 9] and image_ids("-2") == [-2]
    (tmp_path / "ids.txt").write_text("4\n5\n")
    assert image_ids(str(tmp_path / "ids.txt")) == [4, 5]
    with pytest.raises(typer.BadParameter, match="neither a comma-separated list of image ids nor a file"):
        image_ids("1,x")


def test_choice():
    assert choice("a", ("a", "b"), "--k") == "a"
    with pytest.raises(typer.BadParameter, match="must be one of a, b"):
        choice("c", ("a", "b"), "--k")
