"""`wsis pseudolabel prm` end to end on a tiny classifier trained by `wsis train classifier`, then
`pseudolabel ccgr` on the maps it saves (the chain of examples/image_labels_to_masks.sh)."""

import json

import numpy as np
import pytest
import torch

from conftest import write
from wsis_cli.cli.app import app
from wsis_cli.coco import parse_dataset, rle_to_mask
from wsis_cli.synth import synthesize
from wsis_cli.weaken import weaken


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("prm")
    gt = synthesize(root, n=6, size=64, seed=0)
    write(root / "gt.json", gt)
    write(root / "ilc.json", weaken(parse_dataset(gt), "ilc").to_json())
    write(root / "il.json", weaken(parse_dataset(gt), "il").to_json())
    r = CliRunner().invoke(app, ["train", "classifier", str(root / "ilc.json"), "--images", str(root / "images"),
                                 "--out", str(root / "cls.pt"), "--backbone", "resnet18", "--weights", "none",
                                 "--size", "64", "--epochs", "1", "--batch-size", "6", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return root


def prm(runner, root, labels, *args):
    return runner.invoke(app, ["pseudolabel", "prm", str(root / labels), "--images", str(root / "images"),
                               "--model", str(root / "cls.pt"), *map(str, args)])


def test_prm_writes_instances_with_points_and_maps(runner, trained, tmp_path):
    out, maps = tmp_path / "prm.json", tmp_path / "maps"
    r = prm(runner, trained, "ilc.json", "--out", out, "--save-maps", maps, "--seed", 0)
    assert r.exit_code == 0, r.output
    ds = parse_dataset(json.loads(out.read_text()))
    labels = parse_dataset(json.loads((trained / "ilc.json").read_text()))
    assert ds.annotations, "no instance at all"
    for a in ds.annotations:
        im = ds.image_by_id[a["image_id"]]
        m = rle_to_mask(ds.rle(a))
        assert m.any() and a["area"] == m.sum()
        x, y, w, h = a["bbox"]
        ys, xs = np.nonzero(m)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 0 <= a["point"][0] <= im["width"] and 0 <= a["point"][1] <= im["height"]
        assert 0 < a["score"] < 1 and a["wsis"]["method"] == "prm"
    # never more instances of a class than its count
    for im in ds.images:
        for c in {a["category_id"] for a in labels.anns_by_image[im["id"]]}:
            want = sum(a["category_id"] == c for a in labels.anns_by_image[im["id"]])
            assert sum(a["category_id"] == c for a in ds.anns_by_image[im["id"]]) <= want
    assert sorted(p.name for p in maps.iterdir()) == [f"{i:06d}.npz" for i in range(1, 7)]
    with np.load(maps / "000001.npz") as z:
        present = sorted({a["category_id"] for a in labels.anns_by_image[1]})
        assert z["category_ids"].tolist() == present and z["scores"].shape == (len(present), 16, 16)
    info = json.loads(out.read_text())["info"]["wsis"]
    assert info["verb"] == "pseudolabel prm" and info["summary"]["instances"] == len(ds.annotations)

    # same seed, same bytes; then CCGR on the saved maps chains
    again = tmp_path / "again.json"
    assert prm(runner, trained, "ilc.json", "--out", again, "--seed", 0).exit_code == 0
    assert json.loads(again.read_text())["annotations"] == json.loads(out.read_text())["annotations"]
    r = runner.invoke(app, ["pseudolabel", "ccgr", str(out), "--maps", str(maps), "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    refined = parse_dataset(json.loads((tmp_path / "c.json").read_text()))
    dropped = refined.info["wsis"]["summary"]["dropped"]  # the coarse map contradicts them
    assert len(refined.annotations) == len(ds.annotations) - dropped and len(refined.annotations) > dropped
    before = {a["id"]: a["bbox"] for a in ds.annotations}
    assert all(a["wsis"]["box_before"] == before[a["id"]] for a in refined.annotations)


def test_prm_il_labels_and_refine_none(runner, trained, tmp_path):
    r = prm(runner, trained, "il.json", "--out", tmp_path / "il.json", "--refine", "none", "--peak-rel", 0.9)
    assert r.exit_code == 0, r.output
    assert parse_dataset(json.loads((tmp_path / "il.json").read_text())).annotations


def test_prm_errors(runner, trained, tmp_path):
    for args, text in ((["--refine", "nope"], "--refine must be one of grabcut, none, got 'nope'"),
                       (["--peak-kernel", "4"], "--peak-kernel must be an odd number >= 1, got 4")):
        r = prm(runner, trained, "ilc.json", *args)  # usage errors, found before any work
        assert r.exit_code == 2 and text in " ".join(r.stderr.replace("│", " ").split()), r.stderr
    not_a_model = tmp_path / "x.pt"
    not_a_model.write_bytes(b"junk")
    r = runner.invoke(app, ["pseudolabel", "prm", str(trained / "ilc.json"), "--images", str(trained / "images"),
                            "--model", str(not_a_model)])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and str(not_a_model) in r.stderr
    if not torch.cuda.is_available():
        assert prm(runner, trained, "ilc.json", "--device", "cuda").exit_code == 2
    (tmp_path / "imgs").mkdir()
    r = runner.invoke(app, ["pseudolabel", "prm", str(trained / "ilc.json"), "--images", str(tmp_path / "imgs"),
                            "--model", str(trained / "cls.pt"), "--out", str(tmp_path / "o.json")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "000001.png" in r.stderr
    assert not (tmp_path / "o.json").exists()
