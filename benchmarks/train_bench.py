"""`wsis train maskrcnn` against a plain torchvision training loop: images/s, same model and data.

    python benchmarks/train_bench.py [--device auto|cpu|cuda] [--amp] [--data synth|coco-mini]
                                     [--n 16] [--size 160] [--epochs 2] [--repeats 3] [--batch-size 2]
                                     [--workers 0] [--threads 1] [--backbone resnet18] [--min-size 160]
                                     [--max-size 256] [--fpn-channels 64] [--head-channels 256]
    python benchmarks/train_bench.py --device cuda --amp --n 32 --size 256 --min-size 256 --max-size 256 \\
                                     --fpn-channels 256 --head-channels 1024 --epochs 5 --repeats 3

Data: ``--data synth`` (default) writes ``--n`` images of ``--size`` px with ``wsis_cli.synth``
(what `wsis data synth` makes) to a temp folder; ``--data coco-mini`` reads the train split of
../shared/data/coco-mini (80 real images; ``--n`` takes the first N). Both sides train on the same
images and instances: non-crowd annotations with a box of at least 1x1 px, every one with a mask.

(a) ours: :func:`wsis_cli.engine.train_detector.train_detector`, which is what `wsis train maskrcnn`
    calls, into a fresh temp run folder: SGD (momentum 0.9, weight decay 1e-4 on weights), gradient
    clipping at norm 10, ``last.pt`` + ``best.pt`` + ``metrics.jsonl`` written every epoch (that is
    in its time). Set so the plain loop can match it: ``--weights none``, ``--no-scale-jitter``,
    ``--warmup-iters 0`` (the cosine decay stays: a per-step float, no cost), no ``--val``,
    ``--keep-epochs 0``; flips as ``--flip/--no-flip`` says (on both sides).
(b) plain: torchvision's detection tutorial loop on the same ``model_config`` /
    ``build_detector(config, weights="none")`` model: a map-style Dataset that reads the image
    (``wsis_cli.images.read_image``) and rasterises each instance's mask from the COCO file, a
    ``DataLoader(shuffle=True, collate_fn=tuple(zip(*batch)))``, ``model(images, targets)``, sum
    of the losses, ``loss.item()``, backward, SGD step (same lr, momentum 0.9, weight decay 1e-4,
    constant lr). With ``--amp`` on CUDA both use ``torch.autocast`` (float16) + ``GradScaler``.
    Targets carry ``has_mask`` (all True): the wsis RoI heads need it.

Each side builds its model (the same initial weights: the plain loop seeds torch as
train_detector does for ``--seed``; the init alone moves the speed by 1-2%), trains one untimed
warm-up epoch, then ``--epochs`` timed epochs: for (a) each epoch from one train_detector log line
to the next (a line comes after the epoch's files are written), for (b) the wall time of each
epoch loop. Same batch size, iterations and images per epoch. Repeats alternate the order (ours
first, then plain first, ...); images/s is that of the median timed epoch over all repeats (a
burst of other load on the machine spoils one epoch, not the figure), and the ratio is ours'
over plain's. Also printed: ours' training loop alone (its own per-epoch ``seconds``, which
leave out the file writes).

``--threads`` defaults to 1 on CPU: on a 2-core machine shared with another busy process, two
OpenMP threads wait on each other at every parallel region and an iteration swings from 0.5 s
to 8 s; one thread runs at a steady ~0.7 s (resnet18, 160 px, batch 2). ``--threads 0`` keeps
torch's default (one per core), as the CLI does.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


# ----------------------------------------------------------------------------- data
def make_data(args, tmp: Path):
    """``(Dataset, images folder, description)``."""
    from wsis_cli.coco import load_dataset, write_json

    if args.data == "coco-mini":
        if not (COCO_MINI / "instances_train.json").is_file():
            raise SystemExit(f"--data coco-mini: {COCO_MINI} is not there")
        ds = load_dataset(COCO_MINI / "instances_train.json")
        if args.n and args.n < len(ds.images):
            ds = ds.subset([im["id"] for im in ds.images[: args.n]])
        return ds, COCO_MINI / "train", f"coco-mini train, {len(ds.images)} images"
    from wsis_cli.synth import synthesize

    folder = tmp / "synth"
    obj = synthesize(folder, n=args.n, size=args.size, seed=args.seed)
    write_json(folder / "gt.json", obj)
    return load_dataset(folder / "gt.json"), folder / "images", f"wsis synth, {args.n} images of {args.size} px"


def plain_records(ds, images_dir: Path) -> list[dict]:
    """Per image: its file and its instances (non-crowd, box >= 1x1 px, with a mask)."""
    label = {c["id"]: k + 1 for k, c in enumerate(ds.categories)}
    out = []
    for im in ds.images:
        anns = [a for a in ds.anns_by_image[im["id"]]
                if not a.get("iscrowd") and a.get("segmentation") and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        out.append({"path": images_dir / im["file_name"], "anns": anns,
                    "labels": [label[a["category_id"]] for a in anns]})
    return out


class PlainImages(torch.utils.data.Dataset):
    """The tutorial's dataset: image -> float tensor in 0..1, target with boxes, labels, masks."""

    def __init__(self, ds, records: list[dict], flip: bool):
        self.ds, self.records, self.flip = ds, records, flip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from wsis_cli.coco import rle_to_mask
        from wsis_cli.images import read_image

        r = self.records[i]
        rgb = read_image(r["path"])
        h, w = rgb.shape[:2]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in r["anns"]], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        masks = torch.from_numpy(np.stack([rle_to_mask(self.ds.rle(a)) for a in r["anns"]]).astype(np.uint8)
                                 if r["anns"] else np.zeros((0, h, w), np.uint8))
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        if self.flip and torch.rand(1).item() < 0.5:
            image, masks = image.flip(-1), masks.flip(-1)
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        target = {"boxes": boxes, "labels": torch.tensor(r["labels"], dtype=torch.int64), "masks": masks,
                  "has_mask": torch.ones(len(r["anns"]), dtype=torch.bool)}
        return image, target


def _collate(batch):
    return tuple(zip(*batch))


# ----------------------------------------------------------------------------- the two sides
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_ours(ds, images_dir: Path, args, dev: torch.device, amp: bool, tmp: Path, tag: str) -> dict:
    from wsis_cli.engine.train_detector import DetectorConfig, train_detector

    cfg = DetectorConfig(backbone=args.backbone, weights="none", epochs=1 + args.epochs, batch_size=args.batch_size,
                         lr=args.lr, warmup_iters=0, min_size=args.min_size, max_size=args.max_size,
                         flip=args.flip, scale_jitter=False, amp=amp, seed=args.seed, workers=args.workers,
                         fpn_channels=args.fpn_channels, head_channels=args.head_channels, keep_epochs=0)
    ends: list[float] = []

    def log(msg: str) -> None:
        if msg.startswith("epoch "):
            _sync(dev)
            ends.append(time.perf_counter())
        if args.verbose:
            print(f"    [ours] {msg}")

    out = train_detector(ds, images_dir, cfg, run=tmp / f"run-{tag}", device=dev, log=log)
    timed = out["history"][1:]
    return {"images": [h["images"] for h in timed], "wall": list(np.diff(ends)),
            "loop": [h["seconds"] for h in timed], "loss": timed[-1]["loss"]}


def run_plain(ds, images_dir: Path, args, dev: torch.device, amp: bool) -> dict:
    from wsis_cli.engine.detection_data import TORCH
    from wsis_cli.engine.rng import torch_seed
    from wsis_cli.models.detector import build_detector, model_config

    records = plain_records(ds, images_dir)
    config = model_config(backbone=args.backbone, category_ids=[c["id"] for c in ds.categories],
                          category_names=[str(c["name"]) for c in ds.categories], min_size=args.min_size,
                          max_size=args.max_size, fpn_channels=args.fpn_channels, head_channels=args.head_channels,
                          pretrained=False)
    torch.manual_seed(torch_seed(args.seed, -1, stream=TORCH))  # the initial weights train_detector draws for this seed
    model = build_detector(config, weights="none").to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    gen = torch.Generator()
    gen.manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(PlainImages(ds, records, args.flip), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.workers, collate_fn=_collate, generator=gen)
    seconds, images, loss_sum = [], [], 0.0
    for epoch in range(1 + args.epochs):
        _sync(dev)
        t0 = time.perf_counter()
        seen = 0
        for xs, ts in loader:
            xs = [x.to(dev) for x in xs]
            ts = [{k: v.to(dev) for k, v in t.items()} for t in ts]
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                loss_dict = model(xs, ts)
            losses = sum(loss for loss in loss_dict.values())
            optimizer.zero_grad()
            scaler.scale(losses).backward()
            scaler.step(optimizer)
            scaler.update()
            value = losses.item()
            seen += len(xs)
            if epoch == args.epochs:
                loss_sum += value * len(xs)
        _sync(dev)
        if epoch > 0:
            seconds.append(time.perf_counter() - t0)
            images.append(seen)
    return {"images": images, "wall": seconds, "loss": loss_sum / max(images[-1], 1)}


def _rate(rows: list[dict], side: str, key: str = "wall") -> float:
    """Images/s of the median timed epoch over all repeats (robust to a burst of load on the
    machine during one epoch); every epoch holds the same images."""
    epochs = [(n, s) for r in rows for n, s in zip(r[side]["images"], r[side][key])]
    return statistics.median(n / s for n, s in epochs)


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--amp", action="store_true", help="mixed precision on both sides (CUDA only)")
    ap.add_argument("--data", choices=("synth", "coco-mini"), default="synth")
    ap.add_argument("--n", type=int, default=16, help="images (synth: made; coco-mini: the first N, 0 = all)")
    ap.add_argument("--size", type=int, default=160, help="synth image side in px")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after 1 warm-up epoch)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating which goes first")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads on CPU (0 = torch's default; see the docstring)")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--min-size", type=int, default=160)
    ap.add_argument("--max-size", type=int, default=256)
    ap.add_argument("--fpn-channels", type=int, default=64)
    ap.add_argument("--head-channels", type=int, default=256)
    ap.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="random flips on both sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print train_detector's log lines")
    args = ap.parse_args()

    import torchvision

    from wsis_cli.engine.device import resolve_device
    from wsis_cli.errors import WsisError

    try:
        dev = resolve_device(args.device)
    except WsisError as e:
        raise SystemExit(f"--device: {e}") from None
    if args.threads and dev.type == "cpu":
        torch.set_num_threads(args.threads)
    amp = args.amp and dev.type == "cuda"
    if args.amp and not amp:
        print("note: --amp needs CUDA; both sides train in float32")
    gpu = f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""
    print(f"machine: {platform.processor() or platform.machine()}{gpu}; torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, {torch.get_num_threads()} CPU threads; device {dev}{', amp' if amp else ''}")

    with tempfile.TemporaryDirectory(prefix="wsis-train-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ds, images_dir, what = make_data(args, tmp)
        records = plain_records(ds, images_dir)
        per_epoch = -(-len(records) // args.batch_size)
        print(f"data: {what}, {sum(len(r['anns']) for r in records)} instances, {len(ds.categories)} classes")
        print(f"model: Mask R-CNN {args.backbone} FPN {args.fpn_channels}, box head {args.head_channels}, "
              f"weights none, min/max size {args.min_size}/{args.max_size}; batch {args.batch_size}, "
              f"{per_epoch} iterations/epoch, lr {args.lr}, workers {args.workers}")
        print(f"both: flips {'on' if args.flip else 'off'}, 1 warm-up epoch + {args.epochs} timed; ours: scale jitter "
              "off, warm-up iters 0, no validation, keep_epochs 0 (last.pt, best.pt, metrics.jsonl still written "
              "each epoch and timed), grad clipping on")
        rows = []
        for r in range(args.repeats):
            order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
            row = {}
            for side in order:
                if side == "ours":
                    row[side] = run_ours(ds, images_dir, args, dev, amp, tmp, str(r))
                else:
                    row[side] = run_plain(ds, images_dir, args, dev, amp)
            rows.append(row)
            o, p = row["ours"], row["plain"]
            ours, loop, plain = _rate([row], "ours"), _rate([row], "ours", "loop"), _rate([row], "plain")
            print(f"  repeat {r + 1} ({' then '.join(order)}): ours {ours:.2f} img/s (loop alone {loop:.2f}; "
                  f"files {sum(o['wall']) - sum(o['loop']):.2f} s in {len(o['wall'])} epochs), plain {plain:.2f} "
                  f"img/s; last-epoch loss ours {o['loss']:.3f} plain {p['loss']:.3f}")

    ours, loop, plain = _rate(rows, "ours"), _rate(rows, "ours", "loop"), _rate(rows, "plain")
    epochs = args.repeats * args.epochs
    print()
    print(f"| | images/s (median epoch of {epochs}) | vs plain |")
    print("|---|---|---|")
    print(f"| (a) ours: train_detector (wsis train maskrcnn) | {ours:.2f} | {ours / plain:.2f} |")
    print(f"| (a') ours, training loop alone (no file writes) | {loop:.2f} | {loop / plain:.2f} |")
    print(f"| (b) plain torchvision loop | {plain:.2f} | 1.00 |")
    print(f"ratio: {ours / plain:.2f}")


if __name__ == "__main__":
    main()
