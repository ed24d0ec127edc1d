"""Wall time of `wsis evaluate` (a whole process) against pycocotools and faster-coco-eval (in-process).

    python benchmarks/evaluate_bench.py [--data ../shared/data/coco-mini] [--split val]
        [--replicas 3] [--repeat 7]

Predictions: the split's ground truth damaged by tests/perturb.py (eroded/dilated, 20% dropped,
15% relabelled, random scores), repeated ``--replicas`` times (each copy after the first with its
scores jittered, so the copies are ranked apart and count as false positives), written to a
temp results file. Every side starts from the JSON files on disk and takes the best of
``--repeat`` runs:

- wsis: ``wsis evaluate GT RESULTS --json`` as a subprocess: interpreter start, imports, load
  and validate both files, COCOeval (10 + 1 IoU thresholds x 3 area ranges) and ABO;
- pycocotools and faster-coco-eval, in the running process (imports already done): COCO(gt),
  loadRes(results), COCOeval segm evaluate, accumulate, summarize (10 thresholds x 4 areas).

Prints the seconds of each, the ratios of wsis to each peer, wsis's own fixed cost (the same
process on a one-image set), what ABO and the extra threshold cost inside wsis, and checks
that all three report the same AP, AP50 and AP75 as pycocotools (and, for wsis, that its two
engines agree on every number).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "coco-mini"
TOL = 1e-6


def replicated_predictions(gt_file: Path, replicas: int) -> list[dict]:
    from wsis_cli.coco import load_dataset

    sys.path.insert(0, str(ROOT / "tests"))  # the tests' damaged-prediction maker
    from perturb import perturbed_predictions

    preds = perturbed_predictions(load_dataset(gt_file), seed=0)
    rng = np.random.default_rng(1)
    out = list(preds)
    for _ in range(replicas - 1):
        jitter = rng.uniform(-0.05, 0.05, len(preds))
        out += [dict(p, score=float(np.clip(p["score"] + j, 0.0, 1.0))) for p, j in zip(preds, jitter)]
    return out


def wsis_cmd() -> list[str]:
    script = Path(sys.executable).with_name("wsis")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsis_cli"]


def run_wsis(gt_file: Path, res_file: Path) -> dict:
    r = subprocess.run([*wsis_cmd(), "evaluate", str(gt_file), str(res_file), "--json"],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"wsis evaluate failed: {r.stderr.strip()}")
    rec = json.loads(r.stdout)
    return {"AP": rec["AP"], "AP50": rec["mAP"]["0.5"], "AP75": rec["mAP"]["0.75"]}


def run_peer(lib: str, gt_file: Path, res_file: Path) -> dict:
    if lib == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(res_file)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def best_of(repeat: int, fn, *args) -> tuple[float, dict]:
    times, value = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - t)
    return min(times), value


def max_diff(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def abo_and_threshold_cost(gt_file: Path, res_file: Path, repeat: int) -> tuple[float, float]:
    """Seconds that ABO and IoU 0.25 (the one threshold beyond COCO's ten) add to wsis's
    evaluation, timed on its own parts (best of ``repeat``)."""
    from pycocotools import mask as mask_utils

    from wsis_cli.coco import fill_areas, load_dataset, load_results
    from wsis_cli.metrics import coco_eval as ce

    gt = load_dataset(gt_file)
    fill_areas(gt)
    records, iou_type = ce.normalise_predictions(gt, load_results(res_file), path=str(res_file))
    engine, cats = ce.default_engine(), sorted(gt.category_by_id)

    def precision(thrs):
        gts, dts = ce._gt_anns(gt, iou_type, mask_utils), ce._dt_anns(records, iou_type, mask_utils)
        return ce._precision(engine, gt, gts, dts, iou_type, thrs, cats)

    gts, dts = ce._gt_anns(gt, iou_type, mask_utils), ce._dt_anns(records, iou_type, mask_utils)
    t_abo, _ = best_of(repeat, ce._abo, gts, dts, mask_utils)
    t10, _ = best_of(repeat, precision, ce.STANDARD_IOU_THRS)
    t11, _ = best_of(repeat, precision, np.sort(np.append(ce.STANDARD_IOU_THRS, 0.25)))
    return t_abo, max(t11 - t10, 0.0)


def engines_agree(gt_file: Path, preds: list[dict]) -> float:
    """The largest difference between wsis's two engines over every number evaluate() reports."""
    from wsis_cli.coco import fill_areas, load_dataset
    from wsis_cli.metrics import evaluate

    gt = load_dataset(gt_file)
    fill_areas(gt)
    recs = [evaluate(gt, preds, per_class=True, engine=e) for e in ("faster-coco-eval", "pycocotools")]

    def numbers(r):
        yield from r["mAP"].values()
        yield from (r["AP"], r["AP_S"], r["AP_L"], r["ABO"])
        yield from (c["AP50"] for c in r["per_class"])

    pairs = list(zip(numbers(recs[0]), numbers(recs[1])))
    assert all((a is None) == (b is None) for a, b in pairs)
    return max(abs(a - b) for a, b in pairs if a is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split", default="val", choices=["val", "train"])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: not found (the benchmark needs ../shared/data/coco-mini)")
    from importlib.metadata import version

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; python {platform.python_version()}, "
          f"pycocotools {version('pycocotools')}, faster-coco-eval {version('faster-coco-eval')}")
    gt_file = args.data / f"instances_{args.split}.json"
    with tempfile.TemporaryDirectory() as tmp:
        preds = replicated_predictions(gt_file, args.replicas)
        res_file = Path(tmp) / "results.json"
        res_file.write_text(json.dumps(preds))
        n_images = len(json.loads(gt_file.read_text())["images"])

        # one image, one prediction: what the process costs before any real work
        tiny_gt = json.loads(gt_file.read_text())
        tiny_gt["images"] = tiny_gt["images"][:1]
        tiny_gt["annotations"] = [a for a in tiny_gt["annotations"] if a["image_id"] == tiny_gt["images"][0]["id"]]
        (Path(tmp) / "tiny_gt.json").write_text(json.dumps(tiny_gt))
        (Path(tmp) / "tiny_res.json").write_text(json.dumps(
            [p for p in preds if p["image_id"] == tiny_gt["images"][0]["id"]][:1]))

        run_peer("pycocotools", gt_file, res_file)  # warm the file cache and the imports
        run_peer("faster-coco-eval", gt_file, res_file)
        t_py, r_py = best_of(args.repeat, run_peer, "pycocotools", gt_file, res_file)
        t_fce, r_fce = best_of(args.repeat, run_peer, "faster-coco-eval", gt_file, res_file)
        t_ws, r_ws = best_of(args.repeat, run_wsis, gt_file, res_file)
        t_floor, _ = best_of(args.repeat, run_wsis, Path(tmp) / "tiny_gt.json", Path(tmp) / "tiny_res.json")
        t_abo, t_thr = abo_and_threshold_cost(gt_file, res_file, args.repeat)
        d_engines = engines_agree(gt_file, preds)

    d_fce, d_ws = max_diff(r_fce, r_py), max_diff(r_ws, r_py)
    print(f"coco-mini {args.split}: {len(preds)} predictions ({args.replicas} replicas) on {n_images} images, "
          f"AP {r_py['AP']:.4f}, AP50 {r_py['AP50']:.4f}, AP75 {r_py['AP75']:.4f} (pycocotools); best of {args.repeat}")
    print(f"  pycocotools, in-process        {t_py:.3f} s")
    print(f"  faster-coco-eval, in-process   {t_fce:.3f} s   max |diff| vs pycocotools {d_fce:.1e}")
    print(f"  wsis evaluate, whole process   {t_ws:.3f} s   max |diff| vs pycocotools {d_ws:.1e}")
    print(f"    of which the fixed cost      {t_floor:.3f} s   (the same process on 1 image, 1 prediction)")
    print(f"    ABO + IoU 0.25 inside it     {t_abo + t_thr:.3f} s   ({100 * (t_abo + t_thr) / t_ws:.1f}% of the "
          f"process: ABO {t_abo:.3f} s, IoU 0.25 {t_thr:.3f} s)")
    print(f"    engines faster-coco-eval vs pycocotools: max |diff| {d_engines:.1e} over mAP@.25/.5/.75, "
          f"AP, AP_S, AP_L, ABO, per-class AP50")
    print(f"  ratio wsis / faster-coco-eval {t_ws / t_fce:.2f}, wsis / pycocotools {t_ws / t_py:.2f}, "
          f"(wsis - fixed cost) / faster-coco-eval {(t_ws - t_floor) / t_fce:.2f}")
    ok = max(d_fce, d_ws, d_engines) <= TOL
    print(f"  equal to pycocotools within {TOL:g}: {'yes' if ok else 'NO'}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
