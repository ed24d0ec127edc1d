import json
import subprocess
import sys

from conftest import write
from wsis_cli import __version__
from wsis_cli.cli.app import app


def test_help_lists_the_verbs(runner):
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for verb in ("budget", "select", "evaluate", "data", "pseudolabel", "show"):
        assert verb in r.stdout
    r = runner.invoke(app, ["data", "--help"])
    for verb in ("synth", "weaken", "voc", "subset", "merge"):
        assert verb in r.stdout
    r = runner.invoke(app, ["pseudolabel", "--help"])
    assert "grabcut" in r.stdout


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from wsis_cli.cli.app import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'torchvision', 'cv2', 'numpy', 'pycocotools', 'scipy') if m in sys.modules]\n"
            "print(heavy, file=sys.stderr); sys.exit(len(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_version_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "wsis_cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"wsis {__version__}"


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


def test_bad_dataset_is_one_line_exit_1(runner, tmp_path, two_images):
    two_images["annotations"][2]["image_id"] = 9
    gt = write(tmp_path / "gt.json", two_images)
    r = runner.invoke(app, ["data", "weaken", str(gt), "--to", "box"])
    assert r.exit_code == 1
    assert r.stderr.strip() == f"wsis: error: {gt}: annotation 3 (image 9): 'image_id' names no image in the file"
    assert "Traceback" not in r.output
    two_images["annotations"][2]["image_id"] = [2]
    gt = write(tmp_path / "gt.json", two_images)
    r = runner.invoke(app, ["data", "subset", str(gt), "--n", "1"])
    assert r.exit_code == 1
    assert r.stderr.strip() == f"wsis: error: {gt}: annotation 3 (image [2]): 'image_id' must be an integer"
