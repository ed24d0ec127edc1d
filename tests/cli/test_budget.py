"""`wsis budget`: the JSON record, the table, overrides and bad input."""

from __future__ import annotations

import json

from wsis_cli.cli.app import app


def test_cli_json(runner):
    r = runner.invoke(app, ["budget", "--strong", "200", "--weak", "9118", "--weak-type", "ilc", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert set(rec) >= {"per_image_seconds", "strong", "weak", "total", "equivalent_full_images"}
    assert set(rec["strong"]) == {"images", "seconds", "hours", "days"}
    assert set(rec["weak"]) == {"images", "type", "seconds", "hours", "days"}
    assert set(rec["total"]) == {"seconds", "hours", "days"}
    assert round(rec["total"]["days"], 2) == 2.90
    assert rec["info"]["wsis"]["verb"] == "budget"


def test_cli_table_and_overrides(runner):
    r = runner.invoke(app, ["budget", "--strong", "1", "--weak", "1", "--weak-type", "il", "--t-mask", "100"])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # the table is for people: stderr
    assert "total" in r.stderr and "fully annotated images" in r.stderr
    assert "298.50" in r.stderr  # (20 - 1.5) * 1 + 2.8 * 100


def test_cli_bad_input(runner):
    r = runner.invoke(app, ["budget", "--strong", "1", "--weak-type", "pixels"])
    assert r.exit_code == 2 and "must be one of il, ilc, box, full" in r.stderr
    r = runner.invoke(app, ["budget", "--strong", "-3"])
    assert r.exit_code == 2
    for args, option in ((["--t-mask", "inf"], "--t-mask"), (["--t-mask", "-1"], "--t-mask"),
                         (["--t-class", "nan"], "--t-class"), (["--objects-per-image", "inf"], "--objects-per-image"),
                         (["--classes-per-image", "25"], "--classes-per-image")):
        r = runner.invoke(app, ["budget", "--strong", "1", *args, "--json"])
        assert r.exit_code == 2 and option in r.stderr and not r.stdout, (args, r.stderr)


def test_cli_json_types(runner):
    r = runner.invoke(app, ["budget", "--strong", "10", "--weak", "30", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert type(rec["cost_model"]["classes"]) is int and rec["cost_model"]["classes"] == 20  # not 20.0
    assert '"classes": 20,' in r.stdout
    for part in ("strong", "weak"):
        assert type(rec[part]["images"]) is int
    for part in ("strong", "weak", "total"):
        assert all(type(rec[part][k]) is float for k in ("seconds", "hours", "days")), rec[part]
    assert all(type(v) is float for v in rec["per_image_seconds"].values())
    assert all(type(v) is float for k, v in rec["cost_model"].items() if k != "classes")
    assert type(rec["equivalent_full_images"]) is float
    assert rec["weak"]["seconds"] == 666.6 and rec["total"]["hours"] == 0.851
    assert rec["total"]["days"] == 0.0354583333333  # the same 12 significant digits as hours
    # a whole number of classes in, an int out; a fraction of a class is a usage error
    r = runner.invoke(app, ["budget", "--strong", "1", "--classes", "80", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["cost_model"]["classes"] == 80
    r = runner.invoke(app, ["budget", "--strong", "1", "--classes", "20.5", "--json"])
    assert r.exit_code == 2 and "--classes" in r.stderr and not r.stdout
