"""The CCGR system, one whole round through the CLI, as examples/image_labels_to_masks.sh chains it:
classifier -> prm -> train segmenter -> predict-maps -> bags -> train mil -> pseudolabel mil ->
ccgr -> train maskrcnn -> pseudolabel net (the next round's seeds) -> bags on those boxes."""

import json

import pytest

from conftest import TINY, write
from wsis_cli.cli.app import app
from wsis_cli.coco import parse_dataset, rle_to_mask
from wsis_cli.synth import synthesize
from wsis_cli.weaken import weaken

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SMALL = ["--backbone", "resnet18", "--size", "64", "--epochs", "1", "--device", "cpu", "--seed", "0"]


def test_one_round_through_the_cli(runner, tmp_path):
    gt = synthesize(tmp_path, n=6, size=64, seed=0, n_classes=3)
    write(tmp_path / "gt.json", gt)
    write(tmp_path / "ilc.json", weaken(parse_dataset(gt), "ilc").to_json())
    images, p = str(tmp_path / "images"), lambda name: str(tmp_path / name)

    def ok(*args):
        r = runner.invoke(app, [*map(str, args)])
        assert r.exit_code == 0, (args[:2], r.output)
        return r

    ok("train", "classifier", p("ilc.json"), "--images", images, "--out", p("cls.pt"), *SMALL, "--weights", "none",
       "--batch-size", 6)
    ok("pseudolabel", "prm", p("ilc.json"), "--images", images, "--model", p("cls.pt"), "--out", p("prm.json"))
    ok("train", "segmenter", p("prm.json"), "--labels", p("ilc.json"), "--images", images, "--out", p("seg.pt"), *SMALL,
       "--weights", "none")
    ok("predict-maps", p("seg.pt"), "--images", images, "--dataset", p("ilc.json"), "--out", p("maps"))
    ok("pseudolabel", "bags", p("prm.json"), "--images", images, "--maps", p("maps"), "--out", p("bags.json"))
    ok("train", "mil", p("bags.json"), "--images", images, "--out", p("mil.pt"), *SMALL, "--weights", p("seg.pt"))
    ok("pseudolabel", "mil", p("bags.json"), "--images", images, "--model", p("mil.pt"), "--out", p("mil.json"))
    r = ok("pseudolabel", "ccgr", p("mil.json"), "--maps", p("maps"), "--labels", p("ilc.json"), "--out", p("ccgr.json"))
    assert "boxes refined" in r.stderr

    prm, mil = (parse_dataset(json.loads((tmp_path / f).read_text())) for f in ("prm.json", "mil.json"))
    ccgr = parse_dataset(json.loads((tmp_path / "ccgr.json").read_text()))
    assert [a["id"] for a in mil.annotations] == [a["id"] for a in prm.annotations]  # one box per peak
    assert all(a["wsis"]["method"] == "mil" and a["point"] for a in mil.annotations)
    summary = ccgr.info["wsis"]["summary"]
    assert summary["boxes"] + summary["dropped"] == len(mil.annotations) and summary["boxes"] > 0
    assert len(ccgr.annotations) == summary["boxes"] - summary["duplicates"] + summary["added"]
    counts = {}
    for a in json.loads((tmp_path / "ilc.json").read_text())["annotations"]:
        counts[(a["image_id"], a["category_id"])] = counts.get((a["image_id"], a["category_id"]), 0) + 1
    for a in ccgr.annotations:  # never more instances of a class than its count
        assert sum(b["image_id"] == a["image_id"] and b["category_id"] == a["category_id"]
                   for b in ccgr.annotations) <= counts[(a["image_id"], a["category_id"])]
    for a in ccgr.annotations:  # no empty mask, and every box is its mask's
        m = rle_to_mask(ccgr.rle(a))
        assert m.any() and a["area"] == m.sum()

    ok("train", "maskrcnn", p("ccgr.json"), "--images", images, "--out", p("run"), *TINY)
    ok("pseudolabel", "net", p("ilc.json"), "--images", images, "--model", p("run"), "--out", p("is.json"),
       "--score-thr", 0)
    ok("pseudolabel", "bags", p("is.json"), "--images", images, "--maps", p("maps"), "--out", p("bags2.json"))
    seeds = parse_dataset(json.loads((tmp_path / "is.json").read_text()))
    bags2 = parse_dataset(json.loads((tmp_path / "bags2.json").read_text()))
    assert len(bags2.annotations) == len(seeds.annotations) > 0
    for a in bags2.annotations:  # a box seed's bag: proposals overlapping the box
        x, y, w, h = a["bbox"]
        assert a["wsis"]["bag"] and all(bx < x + w and x < bx + bw and by < y + h and y < by + bh
                                        for bx, by, bw, bh in a["wsis"]["bag"])
