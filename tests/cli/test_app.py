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
