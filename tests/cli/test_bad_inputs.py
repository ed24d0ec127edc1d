"""The bad-input corpus: every verb, fed what a careless user or a hostile tester feeds it, answers
with exit 1 and one line naming the file, record and problem (or exit 2, a usage error naming the
option), never a traceback, and leaves no output or temp file behind."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from wsis_cli.cli.app import app
from wsis_cli.images import write_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """gt.json + images/ (3 images, 64 px, 2 classes), box.json, ilc.json, a scores file, a
    tiny classifier checkpoint and a score-map folder."""
    root = tmp_path_factory.mktemp("corpus")
    runner = CliRunner()
    for args in (["data", "synth", "--out", str(root), "--n", "3", "--size", "64", "--classes", "2", "--seed", "0"],
                 ["data", "weaken", str(root / "gt.json"), "--to", "box", "--out", str(root / "box.json")],
                 ["data", "weaken", str(root / "gt.json"), "--to", "ilc", "--out", str(root / "ilc.json")],
                 ["train", "classifier", str(root / "ilc.json"), "--images", str(root / "images"), "--out",
                  str(root / "cls.pt"), "--backbone", "resnet18", "--weights", "none", "--size", "32", "--epochs",
                  "1", "--batch-size", "4", "--device", "cpu"],
                 ["pseudolabel", "prm", str(root / "ilc.json"), "--images", str(root / "images"), "--model",
                  str(root / "cls.pt"), "--save-maps", str(root / "maps"), "--out", str(root / "prm.json"),
                  "--refine", "none", "--device", "cpu"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
    (root / "scores.json").write_text(json.dumps({"images": [{"image_id": 1, "score": 0.5, "instances": []}]}))
    return root


@dataclass
class Case:
    argv: Callable[[Path], list[str]]   # the command line, built in the case's own copy of `base`
    code: int                           # 1: an input error, 2: a usage error
    says: str                           # a fragment of the message (the file's name where it is one)
    out: str | None = None              # an output the command must not leave behind
    prepare: Callable[[Path], None] | None = None


def edit(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def prepare(d: Path) -> None:
        obj = json.loads((d / name).read_text())
        change(obj)
        (d / name).write_text(json.dumps(obj))
    return prepare


def text(name: str, content: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(content)


def image(i: int, side: tuple[int, int] | None = None, junk: bool = False) -> Callable[[Path], None]:
    def prepare(d: Path) -> None:
        path = d / "images" / f"{i:06d}.png"
        if junk:
            path.write_bytes(b"\x89PNG\r\n this is no picture")
        else:
            write_image(path, np.zeros((*side, 3), np.uint8))
    return prepare


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda d: [s(d) for s in steps]


def nan_box(d: Path) -> None:
    t = (d / "box.json").read_text()
    obj = json.loads(t)
    first = json.dumps(obj["annotations"][0]["bbox"])
    (d / "box.json").write_text(t.replace(first, "[NaN, 2.0, 5.0, 5.0]", 1))


def set_ann(name: str, key: str, value) -> Callable[[Path], None]:
    return edit(name, lambda o: o["annotations"][0].__setitem__(key, value))


def grab(d: Path, *extra: str) -> list[str]:
    return ["pseudolabel", "grabcut", str(d / "box.json"), "--images", str(d / "images"), "--workers", "1", *extra]


def cls(d: Path, *extra: str) -> list[str]:
    return ["train", "classifier", str(d / "ilc.json"), "--images", str(d / "images"), "--backbone", "resnet18",
            "--weights", "none", "--size", "32", "--epochs", "1", "--device", "cpu", *extra]


def det(d: Path, labels: str, *extra: str) -> list[str]:
    return ["train", "maskrcnn", str(d / labels), "--images", str(d / "images"), "--backbone", "resnet18",
            "--weights", "none", "--min-size", "64", "--max-size", "64", "--fpn-channels", "16", "--head-channels",
            "32", "--epochs", "1", "--device", "cpu", *extra]


def prm(d: Path, *extra: str) -> list[str]:
    return ["pseudolabel", "prm", str(d / "ilc.json"), "--images", str(d / "images"), "--model", str(d / "cls.pt"),
            "--device", "cpu", *extra]


def ccgr(d: Path, *extra: str) -> list[str]:
    return ["pseudolabel", "ccgr", str(d / "prm.json"), "--maps", str(d / "maps"), "--steps", "2", *extra]


CASES: dict[str, Case] = {
    # data synth
    "synth absurd size": Case(lambda d: ["data", "synth", "--out", str(d / "s"), "--size", "100000000"], 2,
                              "--size", "s"),
    "synth no images": Case(lambda d: ["data", "synth", "--out", str(d / "s"), "--n", "0"], 2, "--n", "s"),
    "synth over a set": Case(lambda d: ["data", "synth", "--out", str(d), "--n", "2", "--size", "32"], 1,
                             "holds a dataset already"),
    "synth to stdout": Case(lambda d: ["data", "synth", "--out", "-"], 2, "--out"),
    "synth five classes": Case(lambda d: ["data", "synth", "--out", str(d / "s"), "--classes", "5"], 2, "--classes",
                               "s"),
    # data weaken
    "weaken malformed json": Case(lambda d: ["data", "weaken", str(d / "gt.json"), "--to", "box", "--out",
                                             str(d / "o.json")], 1, "gt.json", "o.json", text("gt.json", "{oops")),
    "weaken bad level": Case(lambda d: ["data", "weaken", str(d / "gt.json"), "--to", "pixels"], 2, "--to"),
    "weaken image label to box": Case(lambda d: ["data", "weaken", str(d / "ilc.json"), "--to", "box", "--out",
                                                 str(d / "o.json")], 1, "ilc.json", "o.json"),
    "weaken missing file": Case(lambda d: ["data", "weaken", str(d / "none.json"), "--to", "box"], 1, "none.json"),
    # data subset / merge / voc
    "subset bad id list": Case(lambda d: ["data", "subset", str(d / "gt.json"), "--ids", "1,x"], 2, "--ids"),
    "subset unknown id": Case(lambda d: ["data", "subset", str(d / "gt.json"), "--ids", "9", "--out",
                                         str(d / "o.json")], 1, "image id 9 is not in", "o.json"),
    "subset ids and n": Case(lambda d: ["data", "subset", str(d / "gt.json"), "--ids", "1", "--n", "1"], 2, "--ids"),
    "subset too many": Case(lambda d: ["data", "subset", str(d / "gt.json"), "--n", "7"], 1,
                            "asked for 7 images but it has 3"),
    "subset empty id file": Case(lambda d: ["data", "subset", str(d / "gt.json"), "--ids", str(d / "ids.txt")], 1,
                                 "ids.txt", prepare=text("ids.txt", "")),
    "merge other categories": Case(lambda d: ["data", "merge", str(d / "gt.json"), str(d / "g2.json"), "--out",
                                              str(d / "o.json")], 1, "g2.json", "o.json",
                                   lambda d: (d / "g2.json").write_text(
                                       (d / "gt.json").read_text().replace('"name": "disc"', '"name": "ball"'))),
    "merge clashing ids": Case(lambda d: ["data", "merge", str(d / "gt.json"), str(d / "box.json"), "--out",
                                          str(d / "o.json")], 1, "box.json", "o.json"),
    "merge stdin twice": Case(lambda d: ["data", "merge", "-", "-"], 2, "stdin"),
    "voc not a tree": Case(lambda d: ["data", "voc", str(d / "images")], 1, "images"),
    # evaluate
    "evaluate unknown image": Case(lambda d: ["evaluate", str(d / "gt.json"), str(d / "r.json"), "--out",
                                              str(d / "o.json")], 1, "r.json", "o.json",
                                   text("r.json", json.dumps([{"image_id": 99, "category_id": 1, "score": 0.5,
                                                               "bbox": [1, 1, 5, 5]}]))),
    "evaluate bad threshold": Case(lambda d: ["evaluate", str(d / "gt.json"), str(d / "gt.json"), "--iou-thrs", "2"],
                                   2, "--iou-thrs"),
    "evaluate a string": Case(lambda d: ["evaluate", str(d / "gt.json"), str(d / "r.json")], 1, "r.json",
                              prepare=text("r.json", '"hello"')),
    "evaluate nan score": Case(lambda d: ["evaluate", str(d / "gt.json"), str(d / "r.json")], 1, "r.json",
                               prepare=text("r.json", '[{"image_id": 1, "category_id": 1, "score": NaN, '
                                                      '"bbox": [1, 1, 5, 5]}]')),
    "evaluate duplicate image": Case(lambda d: ["evaluate", str(d / "gt.json"), str(d / "gt.json")], 1,
                                     "duplicate image id",
                                     prepare=edit("gt.json", lambda o: o["images"].append(o["images"][0]))),
    # select / budget
    "select bad image id": Case(lambda d: ["select", str(d / "scores.json"), "--n", "1", "--out", str(d / "o.json")],
                                1, "scores.json", "o.json", text("scores.json", json.dumps(
                                    {"images": [{"image_id": "x", "score": 0.5}]}))),
    "select bad beta": Case(lambda d: ["select", str(d / "scores.json"), "--n", "1", "--beta", "abc"], 2, "--beta"),
    "select bad strategy": Case(lambda d: ["select", str(d / "scores.json"), "--n", "1", "--strategy", "best"], 2,
                                "--strategy"),
    "select too many": Case(lambda d: ["select", str(d / "scores.json"), "--n", "5", "--out", str(d / "o.json")], 1,
                            "scores.json", "o.json"),
    "budget negative time": Case(lambda d: ["budget", "--t-mask", "-1"], 2, "--t-mask"),
    "budget classes per image": Case(lambda d: ["budget", "--classes-per-image", "25"], 2, "--classes-per-image"),
    "budget nan": Case(lambda d: ["budget", "--t-class", "nan"], 2, "--t-class"),
    "budget inf": Case(lambda d: ["budget", "--objects-per-image", "inf"], 2, "--objects-per-image"),
    "budget bad type": Case(lambda d: ["budget", "--weak-type", "pixels"], 2, "--weak-type"),
    # show
    "show wsis text": Case(lambda d: ["show", str(d / "gt.json"), "--images", str(d / "images"), "--out",
                                      str(d / "show")], 1, "'wsis' must be an object", "show",
                           set_ann("gt.json", "wsis", "text")),
    "show mis-sized image": Case(lambda d: ["show", str(d / "gt.json"), "--images", str(d / "images"), "--out",
                                            str(d / "show")], 1, "is 96x96 px but image 2", "show", image(2, (96, 96))),
    "show bad ids": Case(lambda d: ["show", str(d / "gt.json"), "--images", str(d / "images"), "--out",
                                    str(d / "show"), "--ids", "1,x"], 2, "--ids", "show"),
    "show out is a file": Case(lambda d: ["show", str(d / "gt.json"), "--images", str(d / "images"), "--out",
                                          str(d / "gt.json")], 2, "--out"),
    "show missing image": Case(lambda d: ["show", str(d / "gt.json"), "--images", str(d / "images"), "--out",
                                          str(d / "show")], 1, "image file not found", "show",
                               lambda d: (d / "images" / "000003.png").unlink()),
    # pseudolabel grabcut
    "grabcut nan box": Case(lambda d: grab(d, "--out", str(d / "o.json")), 1, "box.json", "o.json", nan_box),
    "grabcut bad fallback": Case(lambda d: grab(d, "--fallback", "circle"), 2, "--fallback"),
    "grabcut bad shard": Case(lambda d: grab(d, "--shard", "3/2"), 2, "--shard"),
    "grabcut resume to stdout": Case(lambda d: grab(d, "--resume"), 2, "--resume"),
    "grabcut stray resume log": Case(lambda d: grab(d, "--out", str(d / "o.json")), 1, "holds an interrupted run",
                                     "o.json", text("o.json.resume.jsonl", '{"run": "x"}\n')),
    "grabcut junk image": Case(lambda d: grab(d, "--out", str(d / "o.json")), 1, "000002.png", "o.json",
                               image(2, junk=True)),
    "grabcut mis-sized image": Case(lambda d: grab(d, "--out", str(d / "o.json")), 1, "is 80x80 px but image 1",
                                    "o.json", image(1, (80, 80))),
    "grabcut bad valid iou": Case(lambda d: grab(d, "--valid-iou", "2"), 2, "--valid-iou"),
    "grabcut broken wsis block": Case(lambda d: grab(d, "--out", str(d / "o.json")), 1, "'wsis.valid' must be",
                                      "o.json", set_ann("box.json", "wsis", {"valid": "no"})),
    # pseudolabel prm / ccgr / net
    "prm even kernel": Case(lambda d: prm(d, "--peak-kernel", "4"), 2, "--peak-kernel"),
    "prm bad refine": Case(lambda d: prm(d, "--refine", "magic"), 2, "--refine"),
    "prm junk model": Case(lambda d: prm(d, "--out", str(d / "o.json")), 1, "cls.pt", "o.json",
                           text("cls.pt", "junk")),
    "prm bad device": Case(lambda d: prm(d, "--device", "gpu"), 2, "--device"),
    "ccgr nan point": Case(lambda d: ccgr(d, "--out", str(d / "o.json")), 1, "'point' must be finite", "o.json",
                           lambda d: (d / "prm.json").write_text(
                               re.sub(r'"point": \[[^,\]]+', '"point": [NaN', (d / "prm.json").read_text(), count=1))),
    "ccgr point outside": Case(lambda d: ccgr(d, "--out", str(d / "o.json")), 1, "lies outside its 64x64 image",
                               "o.json", set_ann("prm.json", "point", [500.0, 3.0])),
    "ccgr bad objective": Case(lambda d: ccgr(d, "--objective", "nope"), 2, "--objective"),
    "ccgr missing map": Case(lambda d: ccgr(d, "--out", str(d / "o.json")), 1, "no score map file", "o.json",
                             lambda d: (d / "maps" / "000001.npz").unlink()),
    "ccgr bad context": Case(lambda d: ccgr(d, "--context", "1"), 2, "--context"),
    "net junk model": Case(lambda d: ["pseudolabel", "net", str(d / "ilc.json"), "--images", str(d / "images"),
                                      "--model", str(d / "cls.pt"), "--out", str(d / "o.json"), "--device", "cpu"],
                           1, "cls.pt", "o.json"),
    "net bad rank": Case(lambda d: ["pseudolabel", "net", str(d / "ilc.json"), "--images", str(d / "images"),
                                    "--model", str(d / "cls.pt"), "--rank", "area"], 2, "--rank"),
    # train classifier / maskrcnn
    "classifier over a checkpoint": Case(lambda d: cls(d, "--out", str(d / "cls.pt")), 1,
                                         "exists; add --resume to continue its training, or --overwrite"),
    "classifier bad backbone": Case(lambda d: cls(d, "--out", str(d / "c.pt"), "--backbone", "vgg16"), 2,
                                    "--backbone", "c.pt"),
    "classifier junk image": Case(lambda d: cls(d, "--out", str(d / "c.pt")), 1,
                                  "not an image file, its header cannot be read", "c.pt", image(3, junk=True)),
    "classifier zero lr": Case(lambda d: cls(d, "--out", str(d / "c.pt"), "--lr", "0"), 2, "--lr", "c.pt"),
    "maskrcnn broken wsis block": Case(lambda d: det(d, "gt.json", "--out", str(d / "run"), "--only-valid"), 1,
                                       "'wsis.valid' must be true or false", "run",
                                       set_ann("gt.json", "wsis", {"valid": "no"})),
    "maskrcnn over a run": Case(lambda d: det(d, "gt.json", "--out", str(d / "run")), 1,
                                "holds a training run already",
                                prepare=lambda d: ((d / "run").mkdir(), (d / "run" / "config.json").write_text("{}"))),
    "maskrcnn missing weights": Case(lambda d: det(d, "gt.json", "--out", str(d / "run"), "--weights", "w.pth"), 2,
                                     "--weights", "run"),
    "maskrcnn mis-sized image": Case(lambda d: det(d, "gt.json", "--out", str(d / "run")), 1,
                                     "is 70x64 px but image 3", "run", image(3, (64, 70))),
    "maskrcnn out is a file": Case(lambda d: det(d, "gt.json", "--out", str(d / "gt.json")), 2, "--out"),
    # predict / score-iou
    "predict not a run": Case(lambda d: ["predict", str(d / "images"), "--images", str(d / "images"), "--out",
                                         str(d / "o.json"), "--device", "cpu"], 1, "not a wsis training run", "o.json"),
    "predict junk checkpoint": Case(lambda d: ["predict", str(d / "cls.pt"), "--images", str(d / "images"), "--out",
                                               str(d / "o.json"), "--device", "cpu"], 1,
                                    "not a wsis-maskrcnn checkpoint", "o.json"),
    "score-iou pred without gt": Case(lambda d: ["score-iou", str(d / "gt.json")], 2, "--gt"),
    "score-iou nothing in common": Case(lambda d: ["score-iou", str(d / "gt.json"), "--gt", str(d / "gt.json"),
                                                   "--compare", str(d / "scores.json"), "--out", str(d / "o.json")],
                                        1, "has no image in common", prepare=text("scores.json", json.dumps(
                                            {"images": [{"image_id": 77, "score": 0.5, "instances": []}]}))),
    "score-iou malformed scores": Case(lambda d: ["score-iou", str(d / "gt.json"), "--gt", str(d / "gt.json"),
                                                  "--compare", str(d / "scores.json")], 1, "scores.json",
                                       prepare=text("scores.json", '{"images": 3}')),
}


def test_the_corpus_covers_every_verb():
    verbs = {" ".join(a for a in case.argv(Path("/d"))[:2] if not a.startswith(("/", "-")))
             for case in CASES.values()}
    for verb in ("data synth", "data weaken", "data subset", "data merge", "data voc", "evaluate", "select",
                 "budget", "show", "pseudolabel grabcut", "pseudolabel prm", "pseudolabel ccgr", "pseudolabel net",
                 "train classifier", "train maskrcnn", "predict", "score-iou"):
        assert any(v == verb or v.startswith(verb) for v in verbs), verb
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(base, tmp_path, name):
    case = CASES[name]
    d = tmp_path / "d"
    shutil.copytree(base, d)
    if case.prepare:
        case.prepare(d)
    before = {p for p in d.rglob("*")}
    r = CliRunner().invoke(app, case.argv(d))
    output = r.output
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == case.code, output
    if case.code == 1:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wsis: error: "), r.stderr
        assert case.says in lines[0], lines[0]
    else:
        assert case.says in " ".join(output.replace("│", " ").split()), output
    if case.out is not None:
        assert not (d / case.out).exists(), f"{case.out} was left behind"
    assert not [p for p in d.rglob("*.tmp")], "a temp file was left behind"
    made = {p for p in d.rglob("*")} - before
    assert not [p for p in made if p.is_file()], f"files left behind: {sorted(made)}"
