"""GrabCut pseudo-labels on real COCO boxes: speed against the naive loop, and mask quality.

    python benchmarks/grabcut_bench.py [--data ../shared/data/coco-mini] [--images 40] [--workers 2]
    python benchmarks/grabcut_bench.py --ablation          # mIoU of each refinement idea, all boxes
    python benchmarks/grabcut_bench.py --big [--workers 2]  # one 4000x3000 picture, 200 boxes: 1 vs N workers
    python benchmarks/grabcut_bench.py --quality [--seeds 0,1] [--overlaps larger,lower-edge]  # per class, old vs new

Boxes are the ground-truth boxes of coco-mini train + val (non-crowd); quality is the mean over
instances of the mask IoU with the ground-truth mask (mIoU), split at 64x64 px of box area.

Default mode, on the first ``--images`` images (the same for both, in the same run):
  (a) naive: cv2.grabCut on the full image, GC_INIT_WITH_RECT, 5 iterations, one process, the
      mask as it comes (no fallback);
  (b) the verb's defaults (`wsis pseudolabel grabcut`): crop + margin, downscaled crops,
      clean-up, ellipse fallback, ``--workers`` processes.
It prints boxes/s of each, the throughput ratio (b)/(a) and both mIoUs.

``--ablation`` runs (b)'s core on all boxes with one idea changed at a time, plus the filled
box and the inscribed ellipse, and prints mIoU and time of each.

``--quality``: mean mask IoU per coco-mini supercategory (train + val; those with fewer than 30
boxes pooled as "other") and per class of a synthetic set (`wsis data synth`, 60 images of 256 px,
seed 0, made in a temporary folder), for the old defaults (:data:`OLD`) and the new
(``GrabCutConfig()``), each at every ``--seeds``, with its own overlap policy and each of
``--overlaps``, with the share of valid GrabCut masks. One process, in-process GrabCut per image (no RLE round trip).

``--big`` needs no data: it makes one synthetic photograph (``--size``, default 4000x3000, a
mosaic of `wsis data synth` scenes saved as JPEG) with ``--boxes`` ground-truth boxes (default
200), runs the verb (`python -m wsis_cli pseudolabel grabcut`, whole process) with
``--workers 1`` and with ``--workers N``, prints both times and their ratio, and checks the two
output files are byte-identical.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


def load(data: Path):
    """[(dataset of non-crowd boxes, images dir, {ann id: GT mask RLE})] for train and val."""
    from wsis_cli.coco import load_dataset

    out = []
    for split in ("train", "val"):
        ds = load_dataset(data / f"instances_{split}.json")
        gt = {a["id"]: ds.rle(a) for a in ds.annotations if not a["iscrowd"]}
        ds.annotations = [a for a in ds.annotations if not a["iscrowd"]]
        ds.reindex()
        out.append((ds, data / split, gt))
    return out


def miou(masks: dict[int, np.ndarray | dict], gt: dict[int, dict], areas: dict[int, float]) -> dict:
    from pycocotools import mask as mask_utils

    from wsis_cli.coco import segm_to_rle

    ious, small = [], []
    for ann_id, g in gt.items():
        m = masks[ann_id]
        r = m if isinstance(m, dict) else mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        if isinstance(r.get("counts"), str):
            r = segm_to_rle(r, *r["size"])
        ious.append(float(mask_utils.iou([r], [g], [0])[0, 0]))
        small.append(areas[ann_id] < 64 * 64)
    ious, small = np.array(ious), np.array(small)
    return {"all": ious.mean(), "small": ious[small].mean(), "large": ious[~small].mean(), "n": len(ious)}


def naive(sets) -> tuple[dict, dict, float]:
    import cv2

    from wsis_cli.images import read_image

    cv2.setNumThreads(1)
    masks, areas, t0 = {}, {}, time.perf_counter()
    for ds, img_dir, _ in sets:
        for im in ds.images:
            img = read_image(img_dir / im["file_name"])
            for a in ds.anns_by_image[im["id"]]:
                x, y, w, h = a["bbox"]
                areas[a["id"]] = w * h
                rect = (int(x), int(y), max(1, int(round(w))), max(1, int(round(h))))
                gc = np.zeros(img.shape[:2], np.uint8)
                bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
                try:
                    cv2.setRNGSeed(a["id"])
                    cv2.grabCut(img, gc, rect, bgd, fgd, 5, cv2.GC_INIT_WITH_RECT)
                    masks[a["id"]] = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
                except cv2.error:
                    masks[a["id"]] = np.zeros(img.shape[:2], bool)
    return masks, areas, time.perf_counter() - t0


def verb(sets, cfg, workers: int) -> tuple[dict, dict, float, list]:
    from wsis_cli.pseudo.grabcut_dataset import pseudolabel_grabcut

    masks, areas, outputs, t0 = {}, {}, [], time.perf_counter()
    for ds, img_dir, _ in sets:
        out = pseudolabel_grabcut(ds, images_dir=img_dir, cfg=cfg, workers=workers).to_dataset()
        outputs.append((ds, out))
        for a in out.annotations:
            masks[a["id"]] = a["segmentation"]
            areas[a["id"]] = a["bbox"][2] * a["bbox"][3]
    return masks, areas, time.perf_counter() - t0, outputs


def subset(sets, n_images: int):
    """The first images of train, then val, ``n_images`` in all."""
    out, left = [], n_images
    for ds, img_dir, gt in sets:
        keep = ds.images[:max(0, left)]
        left -= len(keep)
        sub = ds.subset(im["id"] for im in keep)
        out.append((sub, img_dir, {a["id"]: gt[a["id"]] for a in sub.annotations}))
    return [s for s in out if s[0].images]


def fixed_masks(sets, kind: str) -> tuple[dict, dict]:
    from wsis_cli.boxes import xywh_to_xyxy
    from wsis_cli.pseudo.fallback import fallback_mask

    masks, areas = {}, {}
    for ds, _, _ in sets:
        for a in ds.annotations:
            im = ds.image_by_id[a["image_id"]]
            masks[a["id"]] = fallback_mask(kind, xywh_to_xyxy(a["bbox"])[0], im["height"], im["width"])
            areas[a["id"]] = a["bbox"][2] * a["bbox"][3]
    return masks, areas


def all_gt(sets) -> dict:
    return {k: v for _, _, gt in sets for k, v in gt.items()}


def report(name: str, q: dict, seconds: float | None = None) -> None:
    t = f"{seconds:7.1f} s" if seconds is not None else "        "
    print(f"{name:44s} mIoU {q['all']:.3f}  small {q['small']:.3f}  large {q['large']:.3f}  {t}  ({q['n']} boxes)",
          flush=True)


def big_picture(root: Path, width: int, height: int, n_boxes: int, tile: int = 500) -> Path:
    """``root/images/big.jpg``, a mosaic of synthetic scenes, and ``root/boxes.json`` with the
    boxes of its first ``n_boxes`` instances (tiles in reading order)."""
    import json

    from wsis_cli.boxes import mask_to_box
    from wsis_cli.images import write_image
    from wsis_cli.synth import make_image

    img, anns = np.zeros((height, width, 3), np.uint8), []
    for r0 in range(0, height, tile):
        for c0 in range(0, width, tile):
            rgb, instances = make_image(np.random.default_rng([7, r0, c0]), size=tile)
            th, tw = min(tile, height - r0), min(tile, width - c0)
            img[r0:r0 + th, c0:c0 + tw] = rgb[:th, :tw]
            for cls, m in instances:
                x1, y1, x2, y2 = mask_to_box(m[:th, :tw]) if m[:th, :tw].any() else (0, 0, 0, 0)
                if x2 > x1 and y2 > y1 and len(anns) < n_boxes:
                    anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": cls + 1, "iscrowd": 0,
                                 "bbox": [float(c0 + x1), float(r0 + y1), float(x2 - x1), float(y2 - y1)]})
    if len(anns) < n_boxes:
        raise SystemExit(f"the mosaic holds only {len(anns)} instances; ask for fewer --boxes or a larger --size")
    (root / "images").mkdir(parents=True, exist_ok=True)
    write_image(root / "images" / "big.jpg", img)
    ds = {"images": [{"id": 1, "file_name": "big.jpg", "width": width, "height": height}], "annotations": anns,
          "categories": [{"id": k, "name": f"class{k}"} for k in range(1, 5)]}
    (root / "boxes.json").write_text(json.dumps(ds))
    return root / "boxes.json"


def big(args) -> None:
    """``--big``: one large picture, ``--workers 1`` against ``--workers N``, the outputs compared."""
    import os
    import subprocess
    import sys
    import tempfile

    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        boxes = big_picture(root, width, height, args.boxes)
        print(f"one {width}x{height} JPEG, {args.boxes} boxes; load before: {os.getloadavg()[0]:.2f}", flush=True)
        times = {}
        for workers in (1, args.workers):
            cmd = [sys.executable, "-m", "wsis_cli", "pseudolabel", "grabcut", str(boxes), "--images",
                   str(root / "images"), "--out", str(root / f"w{workers}.json"), "--workers", str(workers), "--quiet"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            times[workers] = time.perf_counter() - t0
            print(f"--workers {workers}: {times[workers]:6.2f} s  (load after: {os.getloadavg()[0]:.2f})", flush=True)
        same = (root / "w1.json").read_bytes() == (root / f"w{args.workers}.json").read_bytes()
        print(f"ratio 1 worker / {args.workers} workers: {times[1] / times[args.workers]:.2f}x; "
              f"outputs byte-identical: {same}")
        lib = big_library(boxes, root / "images", args.workers)
        if not same or not lib:
            raise SystemExit("the outputs differ")


def big_library(boxes: Path, images: Path, workers: int) -> bool:
    """The library call alone (no interpreter start, dataset load or output write): its times
    for 1 and ``workers`` workers; whether the two results are the same."""
    import json

    from wsis_cli.coco import load_dataset
    from wsis_cli.pseudo.grabcut import GrabCutConfig
    from wsis_cli.pseudo.grabcut_dataset import pseudolabel_grabcut

    ds, out, times = load_dataset(boxes), {}, {}
    for w in (1, workers):
        t0 = time.perf_counter()
        out[w] = json.dumps(pseudolabel_grabcut(ds, images_dir=images, cfg=GrabCutConfig(), workers=w).to_json())
        times[w] = time.perf_counter() - t0
    print(f"library call (pseudolabel_grabcut): --workers 1 {times[1]:.2f} s, --workers {workers} "
          f"{times[workers]:.2f} s, ratio {times[1] / times[workers]:.2f}x; the same: {out[1] == out[workers]}")
    return out[1] == out[workers]


# the defaults before issue 15 (a test keeps the new ones equal to the verb's)
OLD = dict(max_side=160, downscale="side", cleanup=True, opening=True, retry_iou=0.7, fallback="ellipse",
           overlap="smaller")
MIN_GROUP = 30


def quality_sets(data: Path, synth: Path):
    """[(set name, [(dataset, images dir)], group of an annotation)]: coco-mini train + val by
    supercategory (fewer than ``MIN_GROUP`` boxes: "other"), the synthetic set by class."""
    from wsis_cli.coco import load_dataset

    coco, counts = [], {}
    for split in ("train", "val"):
        ds = load_dataset(data / f"instances_{split}.json")
        ds.annotations = [a for a in ds.annotations if not a["iscrowd"]]
        ds.reindex()
        coco.append((ds, data / split))
        for a in ds.annotations:
            sc = ds.category_by_id[a["category_id"]].get("supercategory") or "?"
            counts[sc] = counts.get(sc, 0) + 1

    def coco_group(ds, a):
        sc = ds.category_by_id[a["category_id"]].get("supercategory") or "?"
        return sc if counts[sc] >= MIN_GROUP else "other"

    synth_ds = load_dataset(synth / "gt.json")
    return [("coco-mini", coco, coco_group),
            ("synth", [(synth_ds, synth / "images")], lambda d, a: d.category_by_id[a["category_id"]]["name"])]


def segment_set(pairs, cfg, group, policies) -> dict[str, list[tuple[str, float, bool]]]:
    """Per overlap policy, per box: ``(group, mask IoU with the truth, valid)``."""
    from pycocotools import mask as mask_utils

    from wsis_cli.boxes import xywh_to_xyxy
    from wsis_cli.images import read_image
    from wsis_cli.pseudo.grabcut import box_seed, segment_boxes
    from wsis_cli.pseudo.overlap import resolve

    rows = {p: [] for p in policies}
    for ds, img_dir in pairs:
        for im in ds.images:
            h, w = im["height"], im["width"]
            clipped = [(a, np.clip(xywh_to_xyxy(a["bbox"])[0], 0, [w, h, w, h])) for a in ds.anns_by_image[im["id"]]]
            clipped = [(a, b) for a, b in clipped if b[2] > b[0] and b[3] > b[1]]  # as the verb: no area, skipped
            if not clipped:
                continue
            img = read_image(img_dir / im["file_name"])
            keep, boxes = [a for a, _ in clipped], np.array([b for _, b in clipped])
            ids = [a["id"] for a in keep]
            res = segment_boxes(img, boxes, [box_seed(cfg.seed, i) for i in ids], cfg)
            gts = [mask_utils.decode(ds.rle(a)).astype(bool) for a in keep]
            for p in policies:
                for a, r, g in zip(keep, resolve(res, ids, h, w, policy=p, boxes=boxes, image=img), gts):
                    m = r.full(h, w)
                    u = 0 if m is None else int((m | g).sum())
                    rows[p].append((group(ds, a), float((m & g).sum() / u) if u else 0.0, bool(r.valid)))
    return rows


def quality(args) -> None:
    """``--quality``: per-class mIoU and validity, old defaults against new, per seed and policy."""
    import tempfile

    from wsis_cli.coco import write_json
    from wsis_cli.pseudo.grabcut import GrabCutConfig
    from wsis_cli.synth import synthesize

    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [p for p in args.overlaps.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synth"
        write_json(synth / "gt.json", synthesize(synth, n=60, size=256, seed=0))
        for sname, pairs, group in quality_sets(args.data, synth):
            table = {}
            for name, base in (("old", GrabCutConfig(**OLD)), ("new", GrabCutConfig())):
                for seed in seeds:
                    t0 = time.perf_counter()
                    policies = [base.overlap] + [p for p in extra if p != base.overlap]
                    for p, rows in segment_set(pairs, replace(base, seed=seed), group, policies).items():
                        table[(name, p, seed)] = rows
                    print(f"{sname}: {name} defaults, seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
            print_quality(sname, table, seeds)


def print_quality(sname: str, table: dict, seeds: list[int]) -> None:
    """Rows: groups (and "all"); columns: mIoU per seed / valid share, for each (defaults, policy)."""
    cols = sorted({(n, p) for n, p, _ in table}, key=lambda c: (c[0] != "old", c[1]))
    groups = sorted({g for rows in table.values() for g, _, _ in rows}) + ["all"]
    print(f"\n{sname}: mIoU at seeds {'/'.join(map(str, seeds))}, valid share (seed {seeds[0]}), boxes")
    print(f"{'group':12s} " + " ".join(f"{n + ' ' + p:>22s}" for n, p in cols) + "  boxes")
    for g in groups:
        cells, n = [], 0
        for name, p in cols:
            ious = []
            for seed in seeds:
                sel = [r for r in table[(name, p, seed)] if g == "all" or r[0] == g]
                ious.append(np.mean([r[1] for r in sel]))
                n = len(sel)
            valid = np.mean([r[2] for r in table[(name, p, seeds[0])] if g == "all" or r[0] == g])
            cells.append(f"{'/'.join(f'{v:.3f}' for v in ious)} {valid:4.2f}v")
        print(f"{g:12s} " + " ".join(f"{c:>22s}" for c in cells) + f"  {n}", flush=True)


def main() -> None:
    from wsis_cli.jobs import default_workers
    from wsis_cli.pseudo.grabcut import GrabCutConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=40, help="images for the speed comparison")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--only", default="", help="with --ablation: only rows whose name contains this text")
    ap.add_argument("--big", action="store_true", help="one big synthetic picture: --workers 1 against N")
    ap.add_argument("--quality", action="store_true", help="per-class mIoU, old defaults against new")
    ap.add_argument("--seeds", default="0,1", help="with --quality: seeds")
    ap.add_argument("--overlaps", default="", help="with --quality: overlap policies besides each config's own")
    ap.add_argument("--size", default="4000x3000", help="with --big: WIDTHxHEIGHT of the picture")
    ap.add_argument("--boxes", type=int, default=200, help="with --big: boxes in the picture")
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {default_workers()} cores, python {platform.python_version()}")
    if args.big:
        return big(args)
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: not found (the benchmark needs ../shared/data/coco-mini)")
    if args.quality:
        return quality(args)
    sets = load(args.data)
    base = GrabCutConfig()  # the verb's defaults (a test keeps the two equal)

    if args.ablation:
        gt = all_gt(sets)
        for kind in ("box", "ellipse") if not args.only else ():
            masks, areas = fixed_masks(sets, kind)
            report(f"filled {kind}, each alone (overlapping)", miou(masks, gt, areas))
        variants = {
            "filled box, overlaps resolved": replace(base, min_side=10**9, fallback="box", retry_iou=0),
            "inscribed ellipse, overlaps resolved": replace(base, min_side=10**9, retry_iou=0),
            "paper: crop, rect init, no clean-up, full res": replace(base, max_side=0, cleanup=False, retry_iou=0),
            "+ crops downscaled to 160 px": replace(base, cleanup=False, retry_iou=0),
            "+ clean-up": replace(base, retry_iou=0),
            "+ core-seeded retry of invalid masks (= defaults)": base,
            "defaults, core seeding first (no retry)": replace(base, init="core", retry_iou=0),
            "defaults, ellipse seeding (corners PR_BGD)": replace(base, init="ellipse"),
            "defaults, Lab colour space": replace(base, color="lab"),
            "defaults, margin 0.5 of the side, >= 16 px": replace(base, margin=0.5, min_margin=16),
            "defaults, 3 iterations": replace(base, iters=3),
            "defaults, 10 iterations": replace(base, iters=10),
            "defaults, valid only if it fills >= 25% of the box": replace(base, min_fill=0.25),
            "defaults, valid-iou 0.7": replace(base, valid_iou=0.7),
            "defaults, no fallback (GrabCut as it comes)": replace(base, fallback="none"),
            # how much a row moves with nothing but the seed (GrabCut's k-means start):
            "defaults, seed 1": replace(base, seed=1),
            "defaults, seed 2": replace(base, seed=2),
            "defaults, Lab colour space, seed 1": replace(base, color="lab", seed=1),
            "defaults, Lab colour space, seed 2": replace(base, color="lab", seed=2),
            "defaults, 3 iterations, seed 1": replace(base, iters=3, seed=1),
            "defaults, 3 iterations, seed 2": replace(base, iters=3, seed=2),
        }
        for name, cfg in variants.items():
            if args.only not in name:
                continue
            masks, areas, secs, _ = verb(sets, cfg, args.workers)
            report(name, miou(masks, gt, areas), secs)
        return

    sub = subset(sets, args.images)
    gt = all_gt(sub)
    n_boxes = len(gt)
    m_a, a_a, t_a = naive(sub)
    q_a = miou(m_a, gt, a_a)
    m_b, a_b, t_b, outs = verb(sub, base, args.workers)
    q_b = miou(m_b, gt, a_b)
    print(f"{sum(len(s[0].images) for s in sub)} images, {n_boxes} boxes, {args.workers} workers")
    report("(a) naive: full image, 5 iterations, 1 process", q_a, t_a)
    report(f"(b) wsis pseudolabel grabcut defaults, {args.workers} workers", q_b, t_b)
    print(f"throughput: (a) {n_boxes / t_a:.2f} boxes/s, (b) {n_boxes / t_b:.2f} boxes/s, "
          f"ratio (b)/(a) {t_a / t_b:.1f}x; mIoU (a) {q_a['all']:.3f} -> (b) {q_b['all']:.3f}")

    from wsis_cli.coco import fill_areas
    from wsis_cli.metrics import evaluate

    for ds, out in outs:
        fill_areas(ds)
        r = evaluate(ds, out)
        print(f"wsis evaluate, {len(ds.images)} images: mAP@0.5 {r['mAP']['0.5']:.3f}, mAP@0.75 {r['mAP']['0.75']:.3f}, "
              f"AP {r['AP']:.3f}, ABO {r['ABO']:.3f}")


if __name__ == "__main__":
    main()
