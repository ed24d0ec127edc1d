"""`wsis budget`: the JSON record, the table, overrides and bad input."""

from __future__ import annotations

import json

from wsis_cli.cli.app import app


def test_cli_json(runner):
    r = runner.invoke(app, ["budget", "--strong", "200", "--weak", "9118", "--weak-type", "ilc", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert set(rec) >= {"per_image_seconds", "strong", "weak", "total", "equivalent_full_images"}
    assert set(rec["strong"]) == {"images", "seconds", "days"}
    assert set(rec["weak"]) == {"images", "type", "seconds", "days"}
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
