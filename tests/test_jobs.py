"""Shards, resume logs and the life of a resumable run (wsis_cli.jobs)."""

from pathlib import Path

import pytest

from wsis_cli.errors import WsisError
from wsis_cli.jobs import (Job, OptionError, Parts, ResumeLog, fingerprint, parse_shard, resume_log_path, run_images,
                           run_job, shard_images)


def test_parse_shard_and_shard_images():
    assert parse_shard(None) is None and parse_shard("2/3") == (2, 3)
    for bad in ("4/3", "a/b", "0/2", "1"):
        with pytest.raises(WsisError, match="--shard"):
            parse_shard(bad)
    images = [{"id": i} for i in (50, 3, 77, 12, 5)]
    assert shard_images(images, None) == images
    parts = [shard_images(images, (k, 2)) for k in (1, 2)]
    # ids ranked 3 5 12 50 77: slice 1 takes ranks 0, 2, 4, each slice keeps the dataset's order
    assert [im["id"] for im in parts[0]] == [3, 77, 12] and [im["id"] for im in parts[1]] == [50, 5]
    assert shard_images([], (1, 2)) == []


def test_resume_refuses_another_runs_file(tmp_path):
    log = ResumeLog(tmp_path / "x.resume.jsonl", fingerprint("v", {"a": 1}, []), resume=False)
    log.append(1, {"ok": True})
    log.close(remove=False)
    for torn in ('{"image_id": 2, "resu', '{"image_id": 2, "result": {"ok": true}}'):  # killed mid-line
        with open(tmp_path / "x.resume.jsonl", "a") as fh:
            fh.write(torn)
        again = ResumeLog(tmp_path / "x.resume.jsonl", fingerprint("v", {"a": 1}, []), resume=True)
        assert again.done == {1: {"ok": True}}
        again.append(3, {"ok": False})
        again.close(remove=False)
        text = (tmp_path / "x.resume.jsonl").read_text()
        assert "\x00" not in text and text.endswith('{"image_id": 3, "result": {"ok": false}}\n')
        lines = text.splitlines()
        assert len(lines) == 3  # header, image 1, image 3: the torn line is gone
        (tmp_path / "x.resume.jsonl").write_text("\n".join(lines[:2]) + "\n")
    from wsis_cli.errors import WsisError

    with pytest.raises(WsisError, match="belongs to another run"):
        ResumeLog(tmp_path / "x.resume.jsonl", fingerprint("v", {"a": 2}, []), resume=True)


def test_resume_log_path(tmp_path):
    assert resume_log_path("-") is None and resume_log_path("/dev/null") is None
    assert resume_log_path(str(tmp_path / "o.json")) == Path(f"{tmp_path / 'o.json'}.resume.jsonl")
    with pytest.raises(OptionError, match="is a folder") as e:
        resume_log_path(str(tmp_path))
    assert e.value.option == "--out"
    for out in ("-", "/dev/null"):
        with pytest.raises(OptionError, match="give --out FILE") as e:
            resume_log_path(out, resume=True)
        assert e.value.option == "--resume"
    Path(f"{tmp_path / 'o.json'}.resume.jsonl").write_text('{"run": "x"}\n')
    with pytest.raises(WsisError, match="holds an interrupted run: add --resume"):
        resume_log_path(str(tmp_path / "o.json"))
    assert resume_log_path(str(tmp_path / "o.json"), resume=True) is not None


def square(x):
    return x * x


def counting_job(fail_at=None, error=KeyboardInterrupt):
    def run(log):
        def fn(x):
            if x == fail_at:
                raise error("stopped") if error is WsisError else error
            return square(x)

        return run_images(fn, [(i, i) for i in range(1, 6)], log=log)

    return Job(verb="v", options={"a": 1}, payload=[1, 2, 3, 4, 5], total=5, run=run)


def test_run_job_writes_and_removes_its_log(tmp_path):
    out = tmp_path / "o.json"
    written, notes = [], []
    result = run_job(counting_job(), out=str(out), resume=False, write=written.append, note=notes.append)
    assert result == {1: 1, 2: 4, 3: 9, 4: 16, 5: 25} and written == [result] and notes == []
    assert not Path(f"{out}.resume.jsonl").exists()
    assert run_job(counting_job(), out="-", resume=False, write=written.append) == result  # no log for stdout


def test_run_job_keeps_finished_images_and_resumes(tmp_path):
    out = tmp_path / "o.json"
    side = Path(f"{out}.resume.jsonl")
    notes = []
    with pytest.raises(KeyboardInterrupt):
        run_job(counting_job(fail_at=4), out=str(out), resume=False, write=lambda r: None, note=notes.append)
    assert notes == [f"3 finished images are kept in {side}: rerun with --resume to continue"]
    assert len(side.read_text().splitlines()) == 1 + 3
    with pytest.raises(WsisError, match="holds an interrupted run"):
        run_job(counting_job(), out=str(out), resume=False, write=lambda r: None)
    # a WsisError stays one line, with where the work is kept
    with pytest.raises(WsisError, match=r"^stopped \(4 finished images are kept in .*: rerun with --resume"):
        run_job(counting_job(fail_at=5, error=WsisError), out=str(out), resume=True, write=lambda r: None)
    notes.clear()
    written = []
    result = run_job(counting_job(), out=str(out), resume=True, write=written.append, note=notes.append)
    assert result == {1: 1, 2: 4, 3: 9, 4: 16, 5: 25} and notes == ["resuming: 4 of 5 images already done"]
    assert not side.exists()


def test_run_job_removes_an_empty_log_and_keeps_it_when_the_write_fails(tmp_path):
    out = tmp_path / "o.json"
    side = Path(f"{out}.resume.jsonl")
    with pytest.raises(KeyboardInterrupt):
        run_job(counting_job(fail_at=1), out=str(out), resume=False, write=lambda r: None)
    assert not side.exists()  # nothing finished: nothing to keep

    def cannot_write(result):
        raise WsisError(f"{out}: cannot write")

    with pytest.raises(WsisError, match="cannot write \\(5 finished images are kept"):
        run_job(counting_job(), out=str(out), resume=False, write=cannot_write)
    assert len(side.read_text().splitlines()) == 1 + 5


def total(n):
    """An "image" of ``n`` boxes, whole: the sum of its box numbers."""
    return sum(range(n))


def piece(arg):
    """One piece of such an image: its boxes' sum, and which process did it; box 13 of image
    ``fail`` raises."""
    import os
    import time

    boxes, fail = arg
    time.sleep(0.04)
    if fail in boxes:
        raise WsisError(f"box {fail} broke")
    return sum(boxes), os.getpid()


def cut(n, fail=-1, pids=None):
    """Images of 10 boxes or more go in pieces of 3."""
    if n < 10:
        return None

    def join(results):
        if pids is not None:
            pids.extend(pid for _, pid in results)
        return sum(s for s, _ in results)

    return Parts(fn=piece, pieces=[(list(range(a, min(n, a + 3))), fail) for a in range(0, n, 3)], join=join)


def test_images_cut_in_parts_give_the_same_results_and_log(tmp_path):
    import os

    tasks = [(1, 12), (2, 4), (3, 30), (4, 0)]
    want = {i: total(n) for i, n in tasks}
    assert run_images(total, tasks, workers=1, split=cut) == want  # in-process: images stay whole
    log = ResumeLog(tmp_path / "x.resume.jsonl", "run", resume=False)
    seen = []
    assert run_images(total, tasks, workers=2, split=cut, log=log, progress=lambda d, t: seen.append((d, t))) == want
    log.close(remove=False)
    assert ResumeLog(tmp_path / "x.resume.jsonl", "run", resume=True).done == want  # one record per image, joined
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    pids = []  # one big image alone still uses the pool: its pieces run in both processes
    assert run_images(total, [(7, 90)], workers=2, split=lambda n: cut(n, pids=pids)) == {7: total(90)}
    assert len(pids) == 30 and os.getpid() in pids and set(pids) - {os.getpid()}


def test_an_error_in_a_piece_is_one_line_and_stops_the_pool():
    import multiprocessing as mp
    import time

    with pytest.raises(WsisError) as e:
        run_images(total, [(1, 60), (2, 60)], workers=2, split=lambda n: cut(n, fail=13))
    assert str(e.value) == "box 13 broke"
    deadline = time.time() + 10
    while mp.active_children() and time.time() < deadline:
        time.sleep(0.05)
    assert not mp.active_children()


def _run_script(path, head: str, fn: str) -> list:
    """Run a script of ``head`` then ``run_images(fn, ...)`` on 2 workers under ``__main__``: its results."""
    import ast
    import subprocess
    import sys

    path.write_text(f"{head}from wsis_cli.jobs import run_images\nif __name__ == '__main__':\n"
                    f"    print(sorted(run_images({fn}, [(i, i) for i in range(6)], workers=2).items()))\n")
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return ast.literal_eval(r.stdout.strip())


def test_pool_workers_do_not_run_the_parents_script_again(tmp_path):
    """A console script (like `wsis`) imports at its top; spawned workers must not run it again."""
    marker = tmp_path / "ran.txt"
    head = (f"import operator\nopen({str(marker)!r}, 'a').write('top\\n')\n"
            "from wsis_cli.cli.app import main  # what the console script holds\n")
    assert _run_script(tmp_path / "script.py", head, "operator.neg") == [(i, -i) for i in range(6)]
    assert marker.read_text() == "top\n"  # once, in the parent
    # any other script stays visible to the workers: the pool may run its own functions
    head = "def twice(x):\n    return 2 * x\n"
    assert _run_script(tmp_path / "other.py", head, "twice") == [(i, 2 * i) for i in range(6)]


def threaded_piece(arg):
    import os
    import threading
    import time

    boxes, fail = arg
    time.sleep(0.02)  # sleeping frees the GIL, as GrabCut does
    if fail in boxes:
        raise WsisError(f"box {fail} broke")
    return sum(boxes), (os.getpid(), threading.get_ident())


def test_a_lone_image_runs_its_pieces_on_threads_of_this_process():
    import os

    seen = []

    def split(n, fail=-1):
        def join(results):
            seen.extend(who for _, who in results)
            return sum(s for s, _ in results)

        return Parts(fn=threaded_piece, pieces=[(list(range(a, min(n, a + 3))), fail) for a in range(0, n, 3)],
                     join=join, threads=True)

    assert run_images(total, [(7, 90)], workers=2, split=split) == {7: total(90)}
    assert len(seen) == 30 and {pid for pid, _ in seen} == {os.getpid()} and len({t for _, t in seen}) == 2
    with pytest.raises(WsisError, match="box 13 broke"):
        run_images(total, [(7, 90)], workers=2, split=lambda n: split(n, fail=13))
    seen.clear()  # with more than one image the pool of processes takes the pieces, as before
    assert run_images(total, [(7, 90), (8, 30)], workers=2, split=split) == {7: total(90), 8: total(30)}
    assert len(seen) == 40
