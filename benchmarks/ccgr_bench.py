"""CCGR box refinement on score maps built from coco-mini ground truth.

    python benchmarks/ccgr_bench.py [--data ../shared/data/coco-mini] [--maps oracle|cam|both]
                                    [--loop-boxes 300] [--steps 200]

Score maps, one plane per class present in an image (train + val, 159 images):
  oracle  the union of the class's instance masks, Gaussian-blurred (sigma 2 px) with pixel noise
          (sigma 0.1), clipped to 0..1;
  cam     CAM-like: each instance's mask weighted by a Gaussian about one of its parts (a random
          interior pixel, sigma = 0.35 x the square root of its area), so the map peaks at that
          part and fades over the rest; then pooled to stride 16 and upsampled (a classifier's
          resolution), each instance's peak scaled to 1, noise as above.
Start boxes are the GT boxes shrunk to 50% about their centres (box IoU 0.25), each with a
point inside its object: the deepest interior pixel (oracle) or the CAM's part (cam).

Prints the mean box IoU with the GT boxes (non-crowd instances) before and after, for instances
with no same-class neighbour (no other instance of the class within 1.5x their box) and for all:
for each objective, for the plain box of the thresholded map (the connected component of
``map > 0.5`` holding the point), and the wall time of the batched refinement against a per-box
loop of the same optimisation (one box, one optimiser at a time) in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


def _gauss(plane: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(plane, (0, 0), sigma)


def build(data: Path, kind: str, seed: int = 0):
    """Planes, and per instance: plane index, GT box, start box, point, neighbour flag."""
    from scipy import ndimage

    from wsis_cli.boxes import box_iou, xywh_to_xyxy
    from wsis_cli.coco import load_dataset, rle_to_mask

    rng = np.random.default_rng(seed)
    planes, rows = [], []
    for split in ("train", "val"):
        ds = load_dataset(data / f"instances_{split}.json")
        for im in ds.images:
            h, w = im["height"], im["width"]
            by_class: dict[int, list[dict]] = {}
            for a in ds.anns_by_image[im["id"]]:
                by_class.setdefault(a["category_id"], []).append(a)
            for anns in by_class.values():
                masks = [rle_to_mask(ds.rle(a)) for a in anns]
                plane = np.zeros((h, w), np.float32)
                points = []
                for m in masks:
                    if kind == "oracle":
                        dist = ndimage.distance_transform_edt(m)
                        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
                        plane = np.maximum(plane, m.astype(np.float32))
                    else:
                        ys, xs = np.nonzero(m)
                        j = int(rng.integers(len(xs)))
                        y, x = ys[j], xs[j]
                        s = 0.35 * np.sqrt(m.sum())
                        yy, xx = np.mgrid[0:h, 0:w]
                        g = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s * s)).astype(np.float32) * m
                        plane = np.maximum(plane, g)
                    points.append((x + 0.5, y + 0.5))
                if kind == "oracle":
                    plane = _gauss(plane, 2.0)
                else:
                    import cv2

                    small = cv2.resize(plane, (max(1, w // 16), max(1, h // 16)), interpolation=cv2.INTER_AREA)
                    plane = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
                    plane /= max(plane.max(), 1e-6)
                plane = np.clip(plane + rng.normal(0, 0.1, plane.shape).astype(np.float32), 0, 1)
                p = len(planes)
                planes.append(plane)
                gt = xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64))
                ctx = gt.copy()
                c, half = (gt[:, :2] + gt[:, 2:]) / 2, (gt[:, 2:] - gt[:, :2]) * 0.75
                ctx[:, :2], ctx[:, 2:] = c - half, c + half
                near = box_iou(ctx, gt) > 0
                np.fill_diagonal(near, False)
                for i, a in enumerate(anns):
                    if a["iscrowd"]:
                        continue
                    cc, hh = (gt[i, :2] + gt[i, 2:]) / 2, (gt[i, 2:] - gt[i, :2]) / 4
                    start = np.concatenate([cc - hh, cc + hh])
                    others = np.array([points[j] for j in range(len(anns)) if j != i and not anns[j]["iscrowd"]],
                                      dtype=np.float64).reshape(-1, 2)
                    rows.append(dict(plane=p, gt=gt[i], start=start, point=np.array(points[i]), others=others,
                                     isolated=not near[i].any()))
    return planes, rows


def threshold_boxes(planes, rows, thr: float = 0.5) -> np.ndarray:
    from scipy import ndimage

    out = []
    cache: dict[int, tuple[np.ndarray, int]] = {}
    for r in rows:
        if r["plane"] not in cache:
            cache[r["plane"]] = ndimage.label(planes[r["plane"]] > thr)[0], 0
        lab = cache[r["plane"]][0]
        x, y = (int(v) for v in r["point"])
        k = lab[min(y, lab.shape[0] - 1), min(x, lab.shape[1] - 1)]
        if k == 0:
            out.append(r["start"])
            continue
        ys, xs = np.nonzero(lab == k)
        out.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64))
    return np.array(out)


def report(name: str, boxes: np.ndarray, rows) -> dict:
    from wsis_cli.boxes import box_iou

    iou = np.array([box_iou(b[None], r["gt"][None])[0, 0] for b, r in zip(boxes, rows)])
    iso = np.array([r["isolated"] for r in rows])
    res = {"isolated": float(iou[iso].mean()), "all": float(iou.mean())}
    print(f"  {name:<34} isolated {res['isolated']:.3f}   all {res['all']:.3f}")
    return res


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--maps", choices=("oracle", "cam", "both"), default="both")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--objectives", default="gap,mass")
    ap.add_argument("--speed-only", action="store_true", help="skip the quality rows")
    ap.add_argument("--loop-boxes", type=int, default=300,
                    help="boxes timed in the per-box loop (a random subset; 0 = all)")
    args = ap.parse_args()

    import torch

    from wsis_cli.pseudo.ccgr import CCGRConfig, refine_boxes, stop_points

    torch.set_num_threads(torch.get_num_threads())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; load average {_load()}")
    for kind in (("oracle", "cam") if args.maps == "both" else (args.maps,)):
        t = time.perf_counter()
        planes, rows = build(args.data, kind)
        iso = sum(r["isolated"] for r in rows)
        print(f"\n{kind} maps: {len(planes)} planes, {len(rows)} instances ({iso} isolated), "
              f"built in {time.perf_counter() - t:.1f}s")
        starts = np.array([r["start"] for r in rows])
        pidx = np.array([r["plane"] for r in rows])
        pts = np.array([r["point"] for r in rows])
        report("start (GT shrunk to 50%)", starts, rows)
        report("threshold-map box (0.5)", threshold_boxes(planes, rows), rows)
        for obj in ([] if args.speed_only else args.objectives.split(",")):
            for stop in ("point", "split", "none"):
                cfg = CCGRConfig(steps=args.steps, objective=obj, stop="point" if stop == "none" else stop)
                t = time.perf_counter()
                if stop == "none":
                    out = refine_boxes(planes, pidx, starts, cfg)
                else:
                    others = stop_points(pts, starts, pidx, stop)
                    out = refine_boxes(planes, pidx, starts, cfg, points=pts, others=others)
                dt = time.perf_counter() - t
                report(f"ccgr {obj}, stop {stop} ({dt:.1f}s)", out, rows)
        if args.loop_boxes >= 0:
            cfg = CCGRConfig(steps=args.steps)
            others = stop_points(pts, starts, pidx, cfg.stop)
            sel = np.arange(len(rows))
            if args.loop_boxes and args.loop_boxes < len(rows):
                sel = np.sort(np.random.default_rng(0).choice(len(rows), args.loop_boxes, replace=False))
            t = time.perf_counter()
            batched_all = refine_boxes(planes, pidx, starts, cfg, points=pts, others=others)
            batched = time.perf_counter() - t
            t = time.perf_counter()
            worst = 0.0
            for i in sel:
                one = refine_boxes([planes[pidx[i]]], [0], starts[i:i + 1], cfg, points=pts[i:i + 1],
                                   others=[others[i]])
                worst = max(worst, float(np.abs(one[0] - batched_all[i]).max()))
            loop = time.perf_counter() - t
            per_box_loop, per_box_batched = loop / len(sel), batched / len(rows)
            print(f"  speed ({cfg.objective}): batched {batched:.2f}s for {len(rows)} boxes; per-box loop "
                  f"{loop:.2f}s for {len(sel)} boxes -> {1e3 * per_box_loop:.1f} vs {1e3 * per_box_batched:.2f} "
                  f"ms/box = {per_box_loop / per_box_batched:.0f}x; max coordinate difference {worst:.2g} px; "
                  f"load average {_load()}")


if __name__ == "__main__":
    main()
