"""Wall time of `wsis evaluate`'s core against a raw pycocotools COCOeval on the same files.

    python benchmarks/evaluate_bench.py [--data ../shared/data/coco-mini] [--repeat 5]

Predictions are the ground truth damaged by tests/perturb.py (eroded/dilated, 20%
dropped, 15% relabelled, random scores), written to a temp results file. Both sides start from
the JSON files on disk:

- baseline: COCO(gt), loadRes(results), COCOeval segm: evaluate, accumulate, summarize
  (10 IoU thresholds x 4 area ranges);
- wsis: load + validate both files, then evaluate() (10 + 1 thresholds x 3 area ranges, ABO).

Prints the best-of-N seconds of each and the ratio wsis / baseline (lower is better; 1.0 = the
same time as bare pycocotools), and checks that both report the same AP.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import platform
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


def baseline(gt_file: Path, res_file: Path) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(res_file)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def ours(gt_file: Path, res_file: Path) -> float:
    from wsis_cli.coco import fill_areas, load_dataset, load_results
    from wsis_cli.metrics import evaluate

    gt = load_dataset(gt_file)
    fill_areas(gt)
    return evaluate(gt, load_results(res_file), iou_thrs=[0.25, 0.5, 0.75], pred_path=str(res_file))["AP"]


def best_of(fn, repeat: int, *args) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - t)
    return min(times), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: not found (the benchmark needs ../shared/data/coco-mini)")

    from wsis_cli.coco import load_dataset
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' damaged-prediction maker
    from perturb import perturbed_predictions

    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "val"):
            gt_file = args.data / f"instances_{split}.json"
            preds = perturbed_predictions(load_dataset(gt_file), seed=0)
            res_file = Path(tmp) / f"results_{split}.json"
            res_file.write_text(json.dumps(preds))
            t_base, ap_base = best_of(baseline, args.repeat, gt_file, res_file)
            t_ours, ap_ours = best_of(ours, args.repeat, gt_file, res_file)
            assert abs(ap_base - ap_ours) < 1e-9, (ap_base, ap_ours)
            print(f"coco-mini {split}: {len(preds)} predictions, AP {ap_ours:.4f} (both) | "
                  f"pycocotools {t_base:.3f} s, wsis {t_ours:.3f} s, ratio wsis/pycocotools {t_ours / t_base:.2f}")


if __name__ == "__main__":
    main()
