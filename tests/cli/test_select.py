"""`wsis select`: the selection file, errors, stdin."""

from __future__ import annotations

import json

from conftest import make_dataset, write

from wsis_cli.cli.app import app


def test_cli(runner, tmp_path):
    sfile = write(tmp_path / "scores.json", {"images": [{"image_id": i, "score": s} for i, s in
                                                         [(1, 0.1), (2, 0.45), (3, 0.55), (4, 0.9)]]})
    strong = write(tmp_path / "strong.json", make_dataset([(2, 8, 8)], []))
    out = tmp_path / "sel.json"
    r = runner.invoke(app, ["select", str(sfile), "--beta", "0.5", "--n", "2", "--exclude", str(strong),
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    assert rec["image_ids"] == [3, 1] and rec["strategy"] == "closest" and rec["beta"] == 0.5 and rec["n"] == 2
    r = runner.invoke(app, ["select", str(sfile), "--beta", "0.0,1.0", "--n", "2"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["image_ids"] == [1, 4] and rec["beta"] == [0.0, 1.0]


def test_cli_errors(runner, tmp_path):
    sfile = write(tmp_path / "scores.json", {"images": [{"image_id": 1, "score": 0.3}]})
    out = tmp_path / "sel.json"
    r = runner.invoke(app, ["select", str(sfile), "--n", "2", "--out", str(out)])
    assert r.exit_code == 1
    assert r.stderr.strip() == (f"wsis: error: {sfile}: asked for 2 images but only 1 are eligible (after --exclude and "
                                "without unscored images)")
    assert not out.exists()
    r = runner.invoke(app, ["select", str(tmp_path / "nope.json"), "--n", "1"])
    assert r.exit_code == 1 and "nope.json: no such file" in r.stderr
    r = runner.invoke(app, ["select", str(sfile), "--n", "1", "--strategy", "best"])
    assert r.exit_code == 2
    for bad in ("nan", "inf", ",", "x"):
        r = runner.invoke(app, ["select", str(sfile), "--n", "1", "--beta", bad])
        assert r.exit_code == 2, (bad, r.output)
        assert "Traceback" not in r.output


def test_cli_stdin(runner):
    payload = json.dumps({"images": [{"image_id": 4, "score": 0.2}, {"image_id": 9, "score": 0.6}]})
    r = runner.invoke(app, ["select", "-", "--n", "1", "--beta", "0.5"], input=payload)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["image_ids"] == [9]
    r = runner.invoke(app, ["select", "-", "--n", "1"], input="{")
    assert r.exit_code == 1 and r.stderr.startswith("wsis: error: <stdin>: not valid JSON")
