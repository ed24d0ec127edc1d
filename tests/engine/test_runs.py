"""The run folder: a kill at any point of an epoch's commit resumes to the weights of an uninterrupted
run with no temp file left; a full disk is one line; resume checks; stale temp files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsis_cli.engine.runs import check_resume, prepare_run, remove_stale_temps
from wsis_cli.errors import WsisError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the subprocesses (OMP_NUM_THREADS=1): same sums

TRAIN = ["--backbone", "resnet18", "--weights", "none", "--fpn-channels", "16", "--head-channels", "32",
         "--min-size", "64", "--max-size", "64", "--device", "cpu", "--epochs", "2", "--batch-size", "3",
         "--keep-epochs", "-1", "--warmup-iters", "1", "--seed", "5"]

# Runs `wsis ARGS...` with the run folder's writers wrapped so that the process SIGKILLs itself at
# POINT of epoch EPOCH's commit (commit_epoch writes: epoch file, best.pt, metrics line, last.pt).
DRIVER = r"""
import os, signal, sys
from wsis_cli.engine import runs

point, target = sys.argv[1], int(sys.argv[2])
real_save, real_metrics = runs.save_checkpoint, runs.append_metrics


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def save(path, obj):
    name, mine = os.path.basename(path), obj.get("epoch") == target
    if mine and point == "before-epoch-file" and name.startswith("epoch-"):
        die()
    if mine and point == "before-last" and name == "last.pt":
        die()
    if mine and point == "while-writing-last" and name == "last.pt":
        open(os.path.join(os.path.dirname(path), f".last.pt.{os.getpid()}.tmp"), "wb").write(b"half")
        die()
    real_save(path, obj)
    if mine and point == "after-epoch-file" and name.startswith("epoch-"):
        die()


def metrics(path, record):
    if record["epoch"] == target and point == "before-metrics":
        die()
    real_metrics(path, record)


runs.save_checkpoint, runs.append_metrics = save, metrics
from wsis_cli.cli.app import main

sys.argv = ["wsis", *sys.argv[3:]]
main()
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from wsis_cli.coco import write_json
    from wsis_cli.synth import synthesize

    root = tmp_path_factory.mktemp("runs")
    write_json(root / "gt.json", synthesize(root, n=3, size=64, n_classes=2, seed=0))
    return root


def _train(data: Path, run: Path, *extra: str, driver: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    args = ["train", "maskrcnn", str(data / "gt.json"), "--images", str(data / "images"), *TRAIN, *extra]
    if "--resume" not in extra:
        args += ["--out", str(run)]
    prefix = ["-c", DRIVER, driver[0], str(driver[1])] if driver else ["-m", "wsis_cli"]
    cmd = [sys.executable, *prefix, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    r = _train(data, run)
    assert r.returncode == 0, r.stderr
    return run


@pytest.mark.parametrize("point", ["before-epoch-file", pytest.param("after-epoch-file", marks=pytest.mark.slow),
                                   "before-metrics", pytest.param("before-last", marks=pytest.mark.slow),
                                   "while-writing-last"])
def test_a_kill_anywhere_in_the_commit_resumes_to_the_uninterrupted_weights(data, straight, tmp_path, point):
    run = tmp_path / "run"
    r = _train(data, run, driver=(point, 2))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1  # epoch 2 never counted as done
    from typer.testing import CliRunner

    from wsis_cli.cli.app import app

    r = CliRunner().invoke(app, ["train", "maskrcnn", str(data / "gt.json"), "--images", str(data / "images"),
                                 *TRAIN, "--resume", str(run)])  # in this process: no second torch start-up
    assert r.exit_code == 0, r.output[-2000:]
    assert f"resuming {run} after epoch 1" in r.stderr
    for name in ("last.pt", "best.pt", "epochs/epoch-002.pt"):
        a, b = _weights(run / name), _weights(straight / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not list(run.rglob("*.tmp")), "a temp file outlived the resumed run"


def test_prepare_run_refuses_or_replaces_and_removes_stale_temps(tmp_path):
    said: list[str] = []
    run = tmp_path / "run"
    assert prepare_run(run, kind="k", resume=False, main=True, say=said.append) is None  # new folder
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(WsisError, match="exists and is not a wsis run folder"):
        prepare_run(run, kind="k", resume=False, main=True, say=said.append)
    (run / "notes.txt").unlink()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("{}\n")
    (run / ".last.pt.77.tmp").write_bytes(b"")
    (run / "epochs").mkdir()
    (run / "epochs" / ".epoch-001.pt.5.tmp").write_bytes(b"")
    with pytest.raises(WsisError, match="holds a training run already; add --resume .* or --overwrite"):
        prepare_run(run, kind="k", resume=False, main=True, say=said.append)
    assert (run / "metrics.jsonl").exists() and not list(run.rglob("*.tmp"))
    assert prepare_run(run, kind="k", resume=False, overwrite=True, main=True, say=said.append) is None
    assert not (run / "metrics.jsonl").exists() and "starting afresh" in said[-1]
    assert prepare_run(run, kind="k", resume=True, main=True, say=said.append) is None
    assert said[-1].endswith("last.pt does not exist yet: training from the start")
    (run / ".x.tmp").write_bytes(b"")
    remove_stale_temps(run)
    assert not (run / ".x.tmp").exists()


def test_check_resume_names_what_differs(tmp_path):
    state = {"version": 1, "config": {"backbone": "resnet18", "category_names": ["a"], "category_ids": [1]},
             "train": {"data": "abc", "lr": 0.01, "world_size": 1}}
    same = dict(run=tmp_path, version=1, config=state["config"], model_keys=("backbone", "category_ids"),
                train_keys=("lr",))
    check_resume(state, train={"data": "abc", "lr": 0.01}, world=1, **same)
    with pytest.raises(WsisError, match=r"was trained with --lr 0.01, not 0.02; --resume needs the same options"):
        check_resume(state, train={"data": "abc", "lr": 0.02}, **same)
    with pytest.raises(WsisError, match="was trained on another dataset"):
        check_resume(state, train={"data": "xyz", "lr": 0.01}, **same)
    with pytest.raises(WsisError, match=r"was trained on other categories \(\['a'\]\)"):
        check_resume(state, train={"data": "abc", "lr": 0.01}, **{**same, "config": {**state["config"],
                                                                                   "category_ids": [2]}})
    with pytest.raises(WsisError, match="checkpoint version 1 is not 2"):
        check_resume(state, train={"data": "abc", "lr": 0.01}, **{**same, "version": 2})
    with pytest.raises(WsisError, match="was trained by 1 processes, not 2"):
        check_resume(state, train={"data": "abc", "lr": 0.01}, world=2, **same)


def _small_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    from wsis_cli.coco import write_json
    from wsis_cli.engine.checkpoint import save_checkpoint

    big = {"format": "wsis-maskrcnn", "model": {"w": torch.zeros(200_000)}}
    disk = tmp_path / "disk"
    mounted = _small_tmpfs(disk)
    try:
        if not mounted:  # no tmpfs here (not root, or no mount): the writer's OSError, injected
            import wsis_cli.coco as coco

            def no_space(fd):
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(coco.os, "fsync", no_space)
        with pytest.raises(WsisError, match=r"(?i)last.pt: cannot write( a checkpoint file)?: no space left on device"):
            save_checkpoint(disk / "last.pt", big)
        with pytest.raises(WsisError, match=r"(?i)out.json: cannot write: no space left on device"):
            write_json(disk / "out.json", {"x": "y" * 400_000})
        assert not list(disk.iterdir())  # no half-written file, no temp file
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], capture_output=True, timeout=10)
