"""`wsis data`: synth, weaken, subset (by ids, --n, --complement, stdin) and their errors."""

from __future__ import annotations

import json

from conftest import make_dataset, write

from wsis_cli.cli.app import app
from wsis_cli.coco import parse_dataset


def test_subset_by_ids_n_and_complement(runner, tmp_path, two_images):
    gt = write(tmp_path / "gt.json", two_images)
    sel = write(tmp_path / "sel.json", {"image_ids": [2], "strategy": "closest"})
    r = runner.invoke(app, ["data", "subset", str(gt), "--ids", str(sel)])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert [im["id"] for im in obj["images"]] == [2] and [a["id"] for a in obj["annotations"]] == [3]
    r = runner.invoke(app, ["data", "subset", str(gt), "--ids", str(sel), "--complement"])
    assert [im["id"] for im in json.loads(r.stdout)["images"]] == [1]
    (tmp_path / "ids.txt").write_text("1\n2\n")
    r = runner.invoke(app, ["data", "subset", str(gt), "--ids", str(tmp_path / "ids.txt")])
    assert len(json.loads(r.stdout)["images"]) == 2
    picks = [json.loads(runner.invoke(app, ["data", "subset", str(gt), "--n", "1", "--seed", str(s)]).stdout)
             ["images"][0]["id"] for s in range(8)]
    assert set(picks) == {1, 2}
    assert picks == [json.loads(runner.invoke(app, ["data", "subset", str(gt), "--n", "1", "--seed", str(s)]).stdout)
                     ["images"][0]["id"] for s in range(8)]


def test_subset_errors(runner, tmp_path, two_images):
    gt = write(tmp_path / "gt.json", two_images)
    (tmp_path / "ids.txt").write_text("1\n77\n")
    out = tmp_path / "o.json"
    r = runner.invoke(app, ["data", "subset", str(gt), "--ids", str(tmp_path / "ids.txt"), "--out", str(out)])
    assert r.exit_code == 1 and r.stderr.strip() == f"wsis: error: {tmp_path / 'ids.txt'}: image id 77 is not in {gt}"
    assert not out.exists()
    r = runner.invoke(app, ["data", "subset", str(gt), "--n", "3"])
    assert r.exit_code == 1 and "asked for 3 images but it has 2" in r.stderr
    r = runner.invoke(app, ["data", "subset", str(gt)])
    assert r.exit_code == 2
    for content, msg in [("", "holds no image ids"), ("[]", "holds no image ids"),
                         ('{"foo": 1}', "needs an 'image_ids' or 'images' list"),
                         ("[true]", "True is not an image id"), ("[1.5]", "1.5 is not an image id"),
                         ("Infinity", "inf is not an image id")]:
        (tmp_path / "ids.txt").write_text(content)
        r = runner.invoke(app, ["data", "subset", str(gt), "--ids", str(tmp_path / "ids.txt")])
        assert r.exit_code == 1 and msg in r.stderr, (content, r.output)
        assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "ids.txt").write_bytes(b"\xff\xfe")
    r = runner.invoke(app, ["data", "subset", str(gt), "--ids", str(tmp_path / "ids.txt")])
    assert r.exit_code == 1 and "not a text or JSON file of image ids" in r.stderr
    r = runner.invoke(app, ["data", "subset", "-", "--ids", "-"], input="{}")
    assert r.exit_code == 2


def test_subset_reads_stdin_and_writes_compressed_rle(runner, two_images):
    two_images["annotations"][0]["segmentation"] = [[2, 2, 12, 2, 12, 12, 2, 12]]  # a polygon in
    r = runner.invoke(app, ["data", "subset", "-", "--n", "2"], input=json.dumps(two_images))
    assert r.exit_code == 0, r.output
    segs = [a["segmentation"] for a in json.loads(r.stdout)["annotations"]]
    assert all(isinstance(s, dict) and isinstance(s["counts"], str) for s in segs)  # compressed RLE out


def test_synth_needs_a_folder(runner):
    r = runner.invoke(app, ["data", "synth", "--out", "-", "--n", "1"])
    assert r.exit_code == 2


def test_synth_is_deterministic(runner, tmp_path):
    for name in ("a", "b"):
        r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / name), "--n", "3", "--size", "64", "--seed", "5"])
        assert r.exit_code == 0, r.output
    a = json.loads((tmp_path / "a" / "gt.json").read_text())
    b = json.loads((tmp_path / "b" / "gt.json").read_text())
    a["info"]["wsis"]["options"].pop("out"), b["info"]["wsis"]["options"].pop("out")
    assert a == b
    assert a["info"]["wsis"]["seed"] == 5
    assert (tmp_path / "a" / "images" / "000001.png").read_bytes() == (tmp_path / "b" / "images" / "000001.png").read_bytes()


def test_synth_bad_size(runner, tmp_path):
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--size", "8"])
    assert r.exit_code == 2


def test_weaken(runner, tmp_path, two_images):
    gt = write(tmp_path / "gt.json", two_images)
    r = runner.invoke(app, ["data", "weaken", str(gt), "--to", "ilc"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert len(obj["annotations"]) == 3 and obj["info"]["wsis"]["options"]["to"] == "ilc"
    assert parse_dataset(obj).levels()["ilc"] == 3
    r = runner.invoke(app, ["data", "weaken", str(gt), "--to", "points"])
    assert r.exit_code == 2


def test_weaken_cannot_box_an_image_label(runner, tmp_path):
    ds = make_dataset([(1, 8, 8)], [{"id": 1, "image_id": 1, "category_id": 1}])
    gt = write(tmp_path / "il.json", ds)
    r = runner.invoke(app, ["data", "weaken", str(gt), "--to", "box", "--out", str(tmp_path / "o.json")])
    assert r.exit_code == 1
    assert r.stderr.strip() == f"wsis: error: {gt}: annotation 1 (image 1): has neither a bbox nor a mask, so it cannot become a box label"
    assert not (tmp_path / "o.json").exists()


def test_subset_takes_ids_as_a_comma_separated_list(runner, tmp_path, two_images):
    gt = write(tmp_path / "gt.json", two_images)
    r = runner.invoke(app, ["data", "subset", str(gt), "--ids", "2"])
    assert r.exit_code == 0, r.output
    assert [im["id"] for im in json.loads(r.stdout)["images"]] == [2]
    r = runner.invoke(app, ["data", "subset", str(gt), "--ids", "1,2", "--complement"])
    assert r.exit_code == 0 and json.loads(r.stdout)["images"] == []
    r = runner.invoke(app, ["data", "subset", str(gt), "--ids", "nowhere.txt"])
    assert r.exit_code == 2 and "neither a comma-separated list" in r.output
