"""The supervision ladder: what each kind of cheap label buys, trained the same way, tested on the
same images, priced by `wsis budget`.

    python benchmarks/ladder.py --out DIR [--rungs LIST] [--train N] [--test N] [--size PX]
                                [--epochs E] [--seed S] [--threads T] [--jobs J] [--strong N]
                                [--select S] [--fusion RULE] [--neck fpn|efpn] [--rounds R]
                                [--seg-epochs E] [--mil-epochs E]

Everything goes through the CLI verbs, the way a user chains them (`python -m wsis_cli ...` in a
subprocess, one log per rung under DIR/logs/). The script makes its own synthetic data (`wsis data
synth`, 3 classes: a train set of --train images and a test set of --test images, other seeds;
at the default 160 px the shapes' boxes are both below and above 64x64 px). Each rung turns the
train set's ground truth into the labels it stands for (`wsis data weaken`/`subset`), makes
pseudo-masks where it needs them, trains a Mask R-CNN with one recipe (ResNet-18 + FPN from
scratch, --size px, the same number of optimisation steps: --epochs over --train images, epochs
scaled up for smaller training sets), predicts the test set and scores it (`wsis evaluate`).

Rungs (annotation of the --train images; cost from `wsis budget` with the set's own classes,
classes and objects per image):

- ``full``: every mask.
- ``box-grabcut``: boxes -> `pseudolabel grabcut` -> train.
- ``box-hybrid``: the hybrid paper: the same GrabCut pseudo-masks; a large branch trained on the
  valid masks (`--only-valid`, invalid instances ignored), a small branch (Faster R-CNN) on the
  invalid ones (`--boxes-only --only-invalid`); `predict --small-branch` with ``--fusion``. Every
  fusion rule and the large branch alone are scored too (``variants``).
- ``box-only``: boxes, no pseudo-masks: `train maskrcnn --box-loss boxinst` (BoxInst's terms).
- ``ilc`` / ``il``: image-level labels with / without counts through the whole CCGR system,
  --rounds rounds: `train classifier` (one, shared) -> `pseudolabel prm` (peaks, PRM masks) ->
  `train segmenter` on them (the SS branch) -> `predict-maps` -> `pseudolabel bags` (proposals
  per peak, Eq. 4) -> `train mil` (trunk from the SS branch) -> `pseudolabel mil` -> `pseudolabel
  ccgr` on the SS maps -> train (the IS branch); a later round starts from the IS branch's labels
  of the training images (`pseudolabel net`): its masks train the SS branch again (its trunk from
  the last one's), its boxes seed the bags. ``stages``: the pseudo-labels' mAP@0.5 after each step.
- ``ilc-prm`` / ``il-prm``: the baselines: `train classifier` -> `pseudolabel prm` -> train.
- ``semi``: --strong images with masks, the rest image-level labels with counts (mask-guided
  sample selection): an annotation network with the IoU head -> `score-iou` -> `select` the
  --select images closest to beta = 0.5 -> annotators draw them (their ground truth) -> retrain ->
  `pseudolabel net --min-iou` on the rest -> train on strong + pseudo with `--only-valid` (pseudo-
  masks predicted below --min-iou are ignore regions), starting from the annotation network's
  weights (``--semi-scratch``: from scratch, which scored below the annotation network itself).
  ``variants``: the retrained annotation network alone, and (``--semi-variants``) the final model
  trained on every pseudo-mask.
- ``strong-only``: the --strong images with masks alone.

Output: DIR/ladder.json ``{"rungs": {NAME: {"test": {mAP25, mAP50, mAP75, AP, AP_S, AP_L},
"pseudo": {mAP50, AP, ABO} or null, "cost_hours", "seconds", ...}}, "settings": {...}}`` and
DIR/ladder.png (test mAP@0.5 against annotation hours, log x). A rung that fails is recorded
with its error and the log's last lines; the others still run. Rungs run --jobs at a time, each
training with --threads torch threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUNGS = ("full", "box-grabcut", "box-hybrid", "box-only", "ilc", "il", "ilc-prm", "il-prm", "semi", "strong-only")
TEST_KEYS = {"mAP25": ("mAP", "0.25"), "mAP50": ("mAP", "0.5"), "mAP75": ("mAP", "0.75"), "AP": ("AP",),
             "AP_S": ("AP_S",), "AP_L": ("AP_L",)}
FUSION_RULES = ("paper", "mask-head", "valid-or-head")
SEG_EPOCHS, MIL_EPOCHS = 8, 5
IL_SCORE_THR = 0.5  # ilc / il, later rounds: IL labels keep the IS branch's detections scoring at least this


class Ladder:
    """The settings, the folders and the shared steps (made once, whichever rung asks first)."""

    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.out = Path(args.out).resolve()
        self.data, self.test = self.out / "data", self.out / "test"
        self.images, self.test_images = self.data / "images", self.test / "images"
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._done: dict[str, object] = {}

    # ------------------------------------------------------------------ running verbs
    def wsis(self, log: Path, *args) -> str:
        """Run one verb; its stdout is returned, its stderr appended to ``log``. A failure raises
        with the verb's last error line."""
        cmd = [sys.executable, "-m", "wsis_cli", *map(str, args)]
        env = dict(os.environ, OMP_NUM_THREADS=str(self.a.threads), PYTHONHASHSEED="0")
        with open(log, "a") as f:
            f.write("$ wsis " + " ".join(map(str, args)) + "\n")
            f.flush()
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
        if p.returncode != 0:
            lines = log.read_text().strip().splitlines()
            raise RuntimeError(f"wsis {args[0]} {args[1] if len(args) > 1 else ''} failed (exit {p.returncode}): "
                               f"{lines[-1] if lines else ''}")
        return p.stdout

    def shared(self, name: str, make):
        """``make()`` once for ``name``, whichever rung asks first; the others wait for it."""
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._done:
                self._done[name] = make()
            return self._done[name]

    def model_args(self, n_images: int) -> list:
        """The one training recipe: the same number of steps whatever the training set's size."""
        a = self.a
        epochs = max(a.epochs, math.ceil(a.epochs * a.train / max(n_images, 1)))
        return ["--backbone", "resnet18", "--weights", "none", "--min-size", a.size, "--max-size", a.size,
                "--fpn-channels", 64, "--head-channels", 256, "--batch-size", 4, "--lr", 0.02,
                "--warmup-iters", 20, "--keep-epochs", 0, "--epochs", epochs,
                "--seed", a.seed if a.train_seed is None else a.train_seed,
                "--threads", a.threads, "--neck", a.neck, "--overwrite", "--quiet"]

    def train(self, log: Path, labels: Path, run: Path, n_images: int, *extra) -> Path:
        self.wsis(log, "train", "maskrcnn", labels, "--images", self.images, "--out", run,
                  *self.model_args(n_images), *extra)
        return run

    def test_scores(self, log: Path, run: Path, name: str, *extra) -> dict:
        """Predict the test set with ``run`` and score it: the ladder's test metrics."""
        pred = run.parent / f"test_{name}.json"
        self.wsis(log, "predict", run, "--images", self.test_images, "--dataset", self.test / "gt.json",
                  "--out", pred, "--seed", self.a.seed, "--quiet", *extra)
        return pick(self.evaluate(log, self.test / "gt.json", pred), TEST_KEYS)

    def evaluate(self, log: Path, gt: Path, pred: Path) -> dict:
        return json.loads(self.wsis(log, "evaluate", gt, pred, "--json", "--quiet"))

    def pseudo_scores(self, log: Path, gt: Path, pseudo: Path) -> dict:
        e = self.evaluate(log, gt, pseudo)
        return {"mAP50": e["mAP"]["0.5"], "AP": e["AP"], "ABO": e["ABO"]}

    def cost(self, log: Path, *, strong: int = 0, weak: int = 0, weak_type: str = "ilc") -> float:
        s = self.stats()
        out = self.wsis(log, "budget", "--strong", strong, "--weak", weak, "--weak-type", weak_type,
                        "--classes", s["classes"], "--classes-per-image", s["classes_per_image"],
                        "--objects-per-image", s["objects_per_image"], "--json")
        return json.loads(out)["total"]["hours"]

    def stats(self) -> dict:
        def make():
            gt = json.loads((self.data / "gt.json").read_text())
            n = len(gt["images"])
            per = {}
            for a in gt["annotations"]:
                per.setdefault(a["image_id"], set()).add(a["category_id"])
            return {"classes": len(gt["categories"]), "objects_per_image": round(len(gt["annotations"]) / n, 3),
                    "classes_per_image": round(sum(len(v) for v in per.values()) / n, 3)}

        return self.shared("stats", make)

    def weak(self, level: str) -> Path:
        def make():
            path = self.out / "shared" / f"{level}.json"
            self.wsis(self.out / "logs" / "shared.log", "data", "weaken", self.data / "gt.json", "--to", level,
                      "--out", path, "--quiet")
            return path

        return self.shared(f"weak-{level}", make)

    def grabcut(self) -> tuple[Path, float]:
        def make():
            t = time.perf_counter()
            path = self.out / "shared" / "grabcut.json"
            self.wsis(self.out / "logs" / "shared.log", "pseudolabel", "grabcut", self.weak("box"), "--images",
                      self.images, "--out", path, "--seed", self.a.seed, "--workers", self.a.threads, "--quiet")
            return path, time.perf_counter() - t

        return self.shared("grabcut", make)

    def seg_args(self, weights) -> list:
        """The SS branch's recipe (``weights``: none, or the previous round's segmenter)."""
        a = self.a
        return ["--backbone", "resnet18", "--weights", weights, "--size", a.size, "--epochs", a.seg_epochs,
                "--seed", a.seed, "--threads", a.threads, "--overwrite", "--quiet"]

    def mil_args(self, seg: Path) -> list:
        """The MIL branch's recipe: its trunk starts from the SS branch's (the paper's shared layers)."""
        a = self.a
        return ["--backbone", "resnet18", "--weights", seg, "--size", a.size, "--epochs", a.mil_epochs,
                "--seed", a.seed, "--threads", a.threads, "--overwrite", "--quiet"]

    def classifier(self) -> tuple[Path, float]:
        def make():
            t = time.perf_counter()
            path = self.out / "shared" / "classifier.pt"
            a = self.a
            self.wsis(self.out / "logs" / "shared.log", "train", "classifier", self.weak("ilc"), "--images",
                      self.images, "--out", path, "--backbone", "resnet18", "--weights", "none", "--size", a.size,
                      "--epochs", max(1, round(a.epochs * 1.2)), "--batch-size", 16, "--lr", 0.05, "--seed", a.seed,
                      "--threads", a.threads, "--overwrite", "--quiet")
            return path, time.perf_counter() - t

        return self.shared("classifier", make)


def pick(e: dict, keys: dict) -> dict:
    out = {}
    for name, path in keys.items():
        v = e
        for k in path:
            v = v[k]
        out[name] = v
    return out


# ----------------------------------------------------------------------------- rungs
def rung_full(L: Ladder, d: Path, log: Path) -> dict:
    run = L.train(log, L.data / "gt.json", d / "run", L.a.train)
    return {"test": L.test_scores(log, run, "full"), "pseudo": None, "cost_hours": L.cost(log, strong=L.a.train)}


def rung_box_grabcut(L: Ladder, d: Path, log: Path) -> dict:
    pseudo, secs = L.grabcut()
    run = L.train(log, pseudo, d / "run", L.a.train)
    return {"test": L.test_scores(log, run, "box-grabcut"), "pseudo": L.pseudo_scores(log, L.data / "gt.json", pseudo),
            "cost_hours": L.cost(log, weak=L.a.train, weak_type="box"), "shared_seconds": round(secs, 1)}


def rung_box_hybrid(L: Ladder, d: Path, log: Path) -> dict:
    pseudo, secs = L.grabcut()
    large = L.train(log, pseudo, d / "large", L.a.train, "--only-valid")
    small = L.train(log, pseudo, d / "small", L.a.train, "--boxes-only", "--only-invalid")
    variants = {"large-only": L.test_scores(log, large, "large-only")}
    for rule in FUSION_RULES:
        variants[f"fusion-{rule}"] = L.test_scores(log, large, f"fusion-{rule}", "--small-branch", small,
                                                   "--fusion", rule)
    invalid = sum(1 for a in json.loads(pseudo.read_text())["annotations"]
                  if (a.get("wsis") or {}).get("valid") is False)
    return {"test": variants[f"fusion-{L.a.fusion}"], "pseudo": L.pseudo_scores(log, L.data / "gt.json", pseudo),
            "cost_hours": L.cost(log, weak=L.a.train, weak_type="box"), "fusion": L.a.fusion, "variants": variants,
            "invalid_masks": invalid, "shared_seconds": round(secs, 1)}


def rung_box_only(L: Ladder, d: Path, log: Path) -> dict:
    run = L.train(log, L.weak("box"), d / "run", L.a.train, "--box-loss", "boxinst")
    return {"test": L.test_scores(log, run, "box-only"), "pseudo": None,
            "cost_hours": L.cost(log, weak=L.a.train, weak_type="box")}


def _rung_prm(L: Ladder, d: Path, log: Path, level: str) -> dict:
    model, secs = L.classifier()
    pseudo = d / "prm.json"
    L.wsis(log, "pseudolabel", "prm", L.weak(level), "--images", L.images, "--model", model, "--out", pseudo,
           "--seed", L.a.seed, "--quiet")
    run = L.train(log, pseudo, d / "run", L.a.train)
    return {"test": L.test_scores(log, run, f"{level}-prm"), "pseudo": L.pseudo_scores(log, L.data / "gt.json", pseudo),
            "cost_hours": L.cost(log, weak=L.a.train, weak_type=level), "shared_seconds": round(secs, 1)}


def rung_ilc_prm(L: Ladder, d: Path, log: Path) -> dict:
    return _rung_prm(L, d, log, "ilc")


def rung_il_prm(L: Ladder, d: Path, log: Path) -> dict:
    return _rung_prm(L, d, log, "il")


def _stage(L: Ladder, log: Path, pseudo: Path) -> float:
    """A pseudo-label file's mask mAP@0.5 against the training ground truth."""
    return round(L.pseudo_scores(log, L.data / "gt.json", pseudo)["mAP50"], 4)


def _rung_system(L: Ladder, d: Path, log: Path, level: str) -> dict:
    """The CCGR system (issue 14): classifier -> PRM peaks -> SS branch on the PRM masks -> bags of
    proposals per peak -> MIL picks one -> CCGR on the SS maps -> IS branch; each later round
    starts from the IS branch's own labels of the training images (`pseudolabel net` with the
    image-level labels): its masks train the SS branch again, its boxes seed the bags."""
    a, w = L.a, L.wsis
    model, secs = L.classifier()
    weak = L.weak(level)
    stages: dict[str, float] = {}
    seeds = d / "prm.json"
    w(log, "pseudolabel", "prm", weak, "--images", L.images, "--model", model, "--out", seeds, "--seed", a.seed,
      "--quiet")
    stages["prm"] = _stage(L, log, seeds)
    seg_init = "none"
    for r in range(1, a.rounds + 1):
        rd = d / f"round{r}"
        rd.mkdir(exist_ok=True)
        seg, maps = rd / "seg.pt", rd / "maps"
        w(log, "train", "segmenter", seeds, "--labels", weak, "--images", L.images, "--out", seg,
          *L.seg_args(seg_init))
        w(log, "predict-maps", seg, "--images", L.images, "--dataset", weak, "--out", maps, "--overwrite", "--quiet")
        w(log, "pseudolabel", "ccgr", seeds, "--maps", maps, "--steps", 0, "--mask-rule", "map", "--out",
          rd / "ss_cropped.json", "--quiet")
        stages[f"r{r}-ss-cropped"] = _stage(L, log, rd / "ss_cropped.json")
        w(log, "pseudolabel", "bags", seeds, "--images", L.images, "--maps", maps, "--out", rd / "bags.json",
          "--seed", a.seed, "--quiet")
        w(log, "train", "mil", rd / "bags.json", "--images", L.images, "--out", rd / "mil.pt", *L.mil_args(seg))
        w(log, "pseudolabel", "mil", rd / "bags.json", "--images", L.images, "--model", rd / "mil.pt", "--out",
          rd / "mil.json", "--quiet")
        w(log, "pseudolabel", "ccgr", rd / "mil.json", "--maps", maps, "--labels", weak, "--out", rd / "ccgr.json",
          "--seed", a.seed, "--quiet")
        stages[f"r{r}-mil-ccgr"] = _stage(L, log, rd / "ccgr.json")
        run = L.train(log, rd / "ccgr.json", rd / "run", a.train)
        if r < a.rounds:  # the IS branch labels the training images: the next round's seeds
            seeds = rd / "is.json"
            w(log, "pseudolabel", "net", weak, "--images", L.images, "--model", run, "--out", seeds,
              "--score-thr", IL_SCORE_THR, "--quiet")  # IL: the confident detections (IL+C: the counts choose)
            stages[f"r{r}-is"] = _stage(L, log, seeds)
            seg_init = seg
    last = d / f"round{a.rounds}" / "ccgr.json"
    for k, v in stages.items():
        print(f"ladder: {level}: pseudo-labels after {k}: mAP@0.5 {v:.3f}", file=sys.stderr, flush=True)
    return {"test": L.test_scores(log, run, level), "pseudo": L.pseudo_scores(log, L.data / "gt.json", last),
            "stages": stages, "rounds": a.rounds, "cost_hours": L.cost(log, weak=a.train, weak_type=level),
            "shared_seconds": round(secs, 1)}


def rung_ilc(L: Ladder, d: Path, log: Path) -> dict:
    return _rung_system(L, d, log, "ilc")


def rung_il(L: Ladder, d: Path, log: Path) -> dict:
    return _rung_system(L, d, log, "il")


def rung_semi(L: Ladder, d: Path, log: Path) -> dict:
    a, gt, w = L.a, L.data / "gt.json", L.wsis
    n, s = a.strong, a.select
    w(log, "data", "subset", gt, "--n", n, "--seed", a.seed, "--out", d / "strong0.json", "--quiet")
    w(log, "data", "subset", gt, "--ids", d / "strong0.json", "--complement", "--out", d / "pool_gt.json", "--quiet")
    w(log, "data", "weaken", d / "pool_gt.json", "--to", "ilc", "--out", d / "pool.json", "--quiet")
    iou = ["--iou-head", "--iou-epochs", 4]
    run0 = L.train(log, d / "strong0.json", d / "run0", n, *iou)
    w(log, "score-iou", "--model", run0, "--images", L.images, "--dataset", d / "pool.json", "--out",
      d / "pool_scores.json", "--quiet")
    w(log, "select", d / "pool_scores.json", "--n", s, "--beta", 0.5, "--out", d / "selected.json", "--quiet")
    w(log, "data", "subset", d / "pool_gt.json", "--ids", d / "selected.json", "--out", d / "annotated.json", "--quiet")
    w(log, "data", "merge", d / "strong0.json", d / "annotated.json", "--out", d / "strong1.json", "--quiet")
    w(log, "data", "subset", d / "pool.json", "--ids", d / "selected.json", "--complement", "--out",
      d / "weak.json", "--quiet")
    run1 = L.train(log, d / "strong1.json", d / "run1", n + s, *iou)
    w(log, "pseudolabel", "net", d / "weak.json", "--images", L.images, "--model", run1, "--out", d / "pseudo.json",
      "--min-iou", a.min_iou, "--quiet")
    w(log, "data", "merge", d / "strong1.json", d / "pseudo.json", "--renumber", "--out", d / "final.json", "--quiet")
    w(log, "data", "subset", d / "pool_gt.json", "--ids", d / "weak.json", "--out", d / "weak_gt.json", "--quiet")
    variants = {"annotation-network": L.test_scores(log, run1, "run1")}
    if a.semi_variants:  # every pseudo-mask trained on (doubtful ones as masks, not ignore regions)
        variants["all-pseudo"] = L.test_scores(log, L.train(log, d / "final.json", d / "run2-all", a.train), "all")
    init = ["--weights", run1 / "best.pt"] if a.semi_finetune else []  # after the recipe's own --weights none
    run2 = L.train(log, d / "final.json", d / "run2", a.train, "--only-valid", *init)
    low = sum(1 for x in json.loads((d / "pseudo.json").read_text())["annotations"]
              if (x.get("wsis") or {}).get("valid") is False)
    return {"test": L.test_scores(log, run2, "semi"),
            "pseudo": L.pseudo_scores(log, d / "weak_gt.json", d / "pseudo.json"),
            "cost_hours": L.cost(log, strong=n + s, weak=a.train - n - s, weak_type="ilc"),
            "strong_images": n + s, "ignored_pseudo": low, "variants": variants}


def rung_strong_only(L: Ladder, d: Path, log: Path) -> dict:
    a = L.a
    L.wsis(log, "data", "subset", L.data / "gt.json", "--n", a.strong, "--seed", a.seed, "--out",
           d / "strong.json", "--quiet")
    run = L.train(log, d / "strong.json", d / "run", a.strong)
    return {"test": L.test_scores(log, run, "strong-only"), "pseudo": None, "cost_hours": L.cost(log, strong=a.strong)}


# trainings of --train images' worth of steps each rung runs (and a share for its other steps)
WORK = {"full": 1, "box-grabcut": 1, "box-hybrid": 2.5, "box-only": 1.5, "ilc": 3, "il": 3, "ilc-prm": 1, "il-prm": 1,
        "semi": 2.7, "strong-only": 1}
RUNG_FUNCS = {"full": rung_full, "box-grabcut": rung_box_grabcut, "box-hybrid": rung_box_hybrid,
              "box-only": rung_box_only, "ilc": rung_ilc, "il": rung_il, "ilc-prm": rung_ilc_prm,
              "il-prm": rung_il_prm, "semi": rung_semi,
              "strong-only": rung_strong_only}
assert tuple(RUNG_FUNCS) == RUNGS


def run_rung(L: Ladder, name: str) -> dict:
    d = L.out / "rungs" / name
    d.mkdir(parents=True, exist_ok=True)
    log = L.out / "logs" / f"{name}.log"
    log.write_text("")
    t = time.perf_counter()
    try:
        res = RUNG_FUNCS[name](L, d, log)
    except Exception as e:  # noqa: BLE001 - a failed rung is recorded, the ladder goes on
        lines = log.read_text().strip().splitlines()[-5:]
        res = {"test": None, "pseudo": None, "cost_hours": None, "error": str(e), "log_tail": lines}
    res["seconds"] = round(time.perf_counter() - t, 1)
    print(f"ladder: {name}: " + (f"test mAP@0.5 {res['test']['mAP50']:.3f}, {res['cost_hours']:.2f} h"
                                 if res.get("test") else f"FAILED: {res['error']}") + f" ({res['seconds']:.0f} s)",
          file=sys.stderr, flush=True)
    return res


# ----------------------------------------------------------------------------- the plot
def plot(rungs: dict, path: Path) -> None:
    """Test mAP@0.5 against annotation hours (log x), one labelled point per rung, drawn with
    OpenCV (a dependency already)."""
    import cv2
    import numpy as np

    pts = [(n, r["cost_hours"], r["test"]["mAP50"]) for n, r in rungs.items() if r.get("test") and r["cost_hours"]]
    w, h, left, right, top, bottom = 900, 600, 80, 40, 40, 70
    img = np.full((h, w, 3), 255, np.uint8)
    if not pts:
        cv2.imwrite(str(path), img)
        return
    lo = 10 ** math.floor(math.log10(min(p[1] for p in pts)))
    hi = 10 ** math.ceil(math.log10(max(p[1] for p in pts) * 1.0001))
    ymax = max(0.1, math.ceil(max(p[2] for p in pts) * 10 + 0.5) / 10)

    def xy(hours, value):
        x = left + (math.log10(hours) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (w - left - right)
        y = h - bottom - value / ymax * (h - top - bottom)
        return int(round(x)), int(round(y))

    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200), (0, 0, 0)
    for k in range(int(round(math.log10(lo))), int(round(math.log10(hi))) + 1):
        x, _ = xy(10 ** k, 0)
        cv2.line(img, (x, top), (x, h - bottom), grey, 1)
        cv2.putText(img, f"{10 ** k:g} h", (x - 20, h - bottom + 22), font, 0.5, black, 1, cv2.LINE_AA)
    for k in range(int(round(ymax * 10)) + 1):
        _, y = xy(lo, k / 10)
        cv2.line(img, (left, y), (w - right, y), grey, 1)
        cv2.putText(img, f"{k / 10:.1f}", (left - 40, y + 5), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), black, 1)
    cv2.putText(img, "annotation hours (log scale)", (w // 2 - 120, h - 20), font, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(img, "test mask mAP@0.5", (10, 25), font, 0.6, black, 1, cv2.LINE_AA)
    for name, hours, value in pts:
        x, y = xy(hours, value)
        cv2.circle(img, (x, y), 6, (40, 90, 200), -1, cv2.LINE_AA)
        cv2.putText(img, name, (x + 9, y - 6), font, 0.5, (40, 40, 40), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


# ----------------------------------------------------------------------------- main
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Folder for everything (created; reused if it exists).")
    p.add_argument("--rungs", default=",".join(RUNGS), help=f"Comma-separated, of: {', '.join(RUNGS)}.")
    p.add_argument("--train", type=int, default=80, help="Training images.")
    p.add_argument("--test", type=int, default=40, help="Test images.")
    p.add_argument("--size", type=int, default=160, help="Image side in px (and the models' input side).")
    p.add_argument("--epochs", type=int, default=10, help="Epochs over --train images (more for smaller sets).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the data, the subsets and every verb.")
    p.add_argument("--train-seed", type=int, default=None,
                   help="Seed of the Mask R-CNN trainings alone (default: --seed): the same data and labels "
                        "trained again, to see the training noise.")
    p.add_argument("--threads", type=int, default=1, help="Torch threads (and GrabCut workers) of each verb.")
    p.add_argument("--jobs", type=int, default=2, help="Rungs run at once.")
    p.add_argument("--strong", type=int, default=12, help="semi / strong-only: images with masks to start with.")
    p.add_argument("--select", type=int, default=6, help="semi: pool images sent to annotators.")
    p.add_argument("--min-iou", type=float, default=0.5, help="semi: pseudo-masks predicted below it are ignored.")
    p.add_argument("--semi-variants", action="store_true", help="semi: also train on every pseudo-mask.")
    p.add_argument("--semi-scratch", dest="semi_finetune", action="store_false",
                   help="semi: train the final model from scratch (default: from the annotation network's weights).")
    p.add_argument("--rounds", type=int, default=2, help="ilc / il: rounds of the CCGR system.")
    p.add_argument("--seg-epochs", type=int, default=SEG_EPOCHS, help="ilc / il: SS branch epochs per round.")
    p.add_argument("--mil-epochs", type=int, default=MIL_EPOCHS, help="ilc / il: MIL branch epochs per round.")
    p.add_argument("--neck", default="fpn", choices=("fpn", "efpn"), help="Every Mask R-CNN's neck.")
    p.add_argument("--fusion", default="mask-head", choices=FUSION_RULES, help="box-hybrid: the fusion rule.")
    a = p.parse_args(argv)
    a.rungs = [r.strip() for r in a.rungs.split(",") if r.strip()]
    bad = [r for r in a.rungs if r not in RUNGS]
    if bad:
        p.error(f"unknown rung(s) {', '.join(bad)}; choose from {', '.join(RUNGS)}")
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    if a.strong + a.select >= a.train:
        p.error("--strong + --select must leave weak images in --train")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    L = Ladder(a)
    for sub in ("logs", "shared", "rungs"):
        (L.out / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = L.out / "logs" / "shared.log"
    log.write_text("")
    L.wsis(log, "data", "synth", "--out", L.data, "--n", a.train, "--size", a.size, "--classes", 3, "--seed",
           1000 + a.seed, "--overwrite", "--quiet")
    L.wsis(log, "data", "synth", "--out", L.test, "--n", a.test, "--size", a.size, "--classes", 3, "--seed",
           2000 + a.seed, "--overwrite", "--quiet")
    order = sorted(a.rungs, key=lambda r: -WORK.get(r, 1))  # the longest first: the jobs end together
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        done = dict(zip(order, pool.map(lambda r: run_rung(L, r), order)))
    results = {r: done[r] for r in a.rungs}
    results = merged(L.out / "ladder.json", a, results)
    full = results.get("full", {}).get("test")
    for r in results.values():
        if full and r.get("test") and full["mAP50"]:
            r["ratio_to_full"] = round(r["test"]["mAP50"] / full["mAP50"], 3)
    settings = {k: v for k, v in vars(a).items() if k != "out"}
    settings["rungs"] = list(results)  # with an earlier file's: "seconds" is this call's wall time alone
    settings.update(data=L.stats(), seconds=round(time.perf_counter() - t0, 1), python=platform.python_version(),
                    machine=f"{platform.machine()}, {os.cpu_count()} cores", model="resnet18 FPN Mask R-CNN from "
                    "scratch, fpn 64, head 256, batch 4, lr 0.02, warm-up 20, steps of --epochs over --train images")
    out = {"rungs": results, "settings": settings}
    (L.out / "ladder.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(results, L.out / "ladder.png")
    print(table(results), file=sys.stderr)
    return 0 if all(r.get("test") for r in results.values()) else 1


SAME_DATA = ("train", "test", "size", "epochs", "seed", "train_seed", "strong", "select", "neck")  # what every rung shares


OLD_DEFAULTS = {"neck": "fpn", "train_seed": None}  # settings a ladder.json from before these options had


def merged(path: Path, a: argparse.Namespace, results: dict) -> dict:
    """``results`` over the rungs of an earlier ladder.json in the same folder made with the same
    data and recipe (so a rung can be rerun alone); an earlier file of other settings is replaced."""
    if not path.is_file():
        return results
    try:
        old = json.loads(path.read_text())
        same = all(old["settings"].get(k, OLD_DEFAULTS.get(k)) == getattr(a, k) for k in SAME_DATA)
    except (ValueError, KeyError, TypeError):
        return results
    if not same:
        print(f"ladder: {path} was made with other settings; replacing it", file=sys.stderr)
        return results
    out = {k: v for k, v in old["rungs"].items() if k not in results}
    out.update(results)
    return {k: out[k] for k in sorted(out, key=lambda k: RUNGS.index(k) if k in RUNGS else len(RUNGS))}


def table(results: dict) -> str:
    rows = ["| rung | test mAP@0.5 | ratio to full | AP | AP_S | AP_L | pseudo mAP@0.5 | cost (h) | seconds |",
            "|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "—" if v is None else f"{v:.3f}"

    for name, r in results.items():
        t = r.get("test") or {}
        rows.append(f"| {name} | {f(t.get('mAP50'))} | {f(r.get('ratio_to_full'))} | {f(t.get('AP'))} | "
                    f"{f(t.get('AP_S'))} | {f(t.get('AP_L'))} | {f((r.get('pseudo') or {}).get('mAP50'))} | "
                    f"{f(r.get('cost_hours'))} | {r['seconds']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
