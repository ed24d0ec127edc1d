"""Train a Mask R-CNN (or, ``boxes_only``, a Faster R-CNN) on any mix of supervision, load it
back, and run it.

Training data: annotations with masks train everything; box-only annotations train the box
branch and are left out of the mask loss; crowd regions are skipped; an image that holds any
image-level label (``il``/``ilc``: no box) is left out, since its unlabelled instances would
teach "background". ``only_valid`` drops annotations whose ``wsis.valid`` is false (the hybrid
paper's large branch trains on valid GrabCut masks only).

Schedule: ``epochs`` of segmentation training (SGD, linear warm-up then cosine decay, flips and
scale jitter), then, with an IoU head, ``iou_epochs`` in which everything but the IoU branch is
frozen and only the IoU branch learns (Adam, L1 loss on ``t(IoU)``): the paper's best recipe.
With a validation set the IoU branch is trained on the best segmentation epoch's weights.

A run folder holds ``config.json`` (the model's :func:`~wsis_cli.models.detector.model_config`
plus the training options), ``metrics.jsonl`` (one line per epoch), ``last.pt`` (everything
``resume`` needs), ``best.pt`` (the model of the best epoch by validation mAP@0.5, with the IoU
branch trained on it; without validation, the final model, written when the run ends) and
``epochs/epoch-NNN.pt`` (the model after each epoch; ``keep_epochs`` most recent). All load with
``torch.load(weights_only=True)``. The files of an epoch are written on a background thread while
the next epoch trains.

Determinism: the image order, flips and the torch seed of every epoch come from ``(seed,
epoch)``, so ``resume`` continues exactly where the run stopped. Under ``torchrun`` (``WORLD_SIZE``
> 1) the model is wrapped in DistributedDataParallel; each process takes every K-th image of the
epoch's order (padded to a multiple of K) and rank 0 writes the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wsis_cli import __version__
from wsis_cli.coco import Dataset, supervision_level
from wsis_cli.detections import Detections, to_results
from wsis_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from wsis_cli.engine.common import FailedSample, damaged_checkpoint, keyed_rng
from wsis_cli.engine.device import resolve_device
from wsis_cli.errors import WsisError
from wsis_cli.images import image_path, read_image
from wsis_cli.models.detector import build_detector, model_config

__all__ = ["FORMAT", "DetectorConfig", "TrainSet", "training_set", "train_detector", "load_run", "detect",
           "masks_in_boxes", "predict_dataset", "dist_context"]

FORMAT = "wsis-maskrcnn"
VERSION = 1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
CLIP_NORM = 10.0
JITTER = (0.8, 0.9, 1.1, 1.2)  # training min sizes: --min-size times these, or --min-size itself


@dataclass(frozen=True)
class DetectorConfig:
    """Options of :func:`train_detector` (the CLI's defaults)."""

    backbone: str = "resnet50"      # resnet50 | resnet18 | mobilenet_v3 (with FPN)
    weights: str = "imagenet"       # imagenet | coco | none | PATH
    epochs: int = 12
    batch_size: int = 2             # images per process and step
    lr: float = 0.02
    warmup_iters: int = 200         # linear warm-up from lr/1000 (capped at a quarter of the run)
    min_size: int = 800
    max_size: int = 1333
    flip: bool = True
    scale_jitter: bool = True
    amp: bool = False
    seed: int = 0
    workers: int = 0
    only_valid: bool = False
    boxes_only: bool = False
    iou_head: bool = False
    iou_target: str = "sqrt"
    iou_epochs: int = 3
    iou_lr: float = 1e-3
    fpn_channels: int = 256
    head_channels: int = 1024
    keep_epochs: int = 3            # per-epoch model files kept (-1: all, 0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- data
@dataclass
class TrainSet:
    """What training reads: per image its file, size and instances (boxes xyxy, label indices
    1..K, which have masks, and the annotations to rasterise)."""

    ds: Dataset
    images: list[dict]
    paths: list[Path]
    anns: list[list[dict]]
    category_ids: list[int]
    skipped: dict[str, int]

    def fingerprint(self) -> str:
        rows = [[im["id"], im["file_name"], [[a.get("id"), a["category_id"], a.get("bbox"), "segmentation" in a]
                                              for a in anns]] for im, anns in zip(self.images, self.anns)]
        return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def training_set(ds: Dataset, images_dir: str | os.PathLike, *, only_valid: bool = False,
                 boxes_only: bool = False) -> TrainSet:
    """Pick the images and annotations a detector trains on (see the module docstring)."""
    skipped = {"crowd": 0, "invalid": 0, "degenerate_box": 0, "image_level_images": 0}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in ds.images}
    weak_images: set[int] = set()
    for a in ds.annotations:
        level = supervision_level(a)
        if level in ("il", "ilc"):
            weak_images.add(a["image_id"])
            continue
        if a.get("iscrowd"):
            skipped["crowd"] += 1
            continue
        if only_valid and isinstance(a.get("wsis"), dict) and a["wsis"].get("valid") is False:
            skipped["invalid"] += 1
            continue
        x, y, w, h = a["bbox"] if a.get("bbox") is not None else (0, 0, 0, 0)
        if w < 1 or h < 1:
            skipped["degenerate_box"] += 1
            continue
        by_image[a["image_id"]].append(a)
    images = [im for im in ds.images if im["id"] not in weak_images]
    skipped["image_level_images"] = len(ds.images) - len(images)
    if not images:
        raise WsisError(f"{ds.path}: no image to train on (images with image-level labels only are left out: "
                        "a detector needs boxes or masks)")
    if not ds.categories:
        raise WsisError(f"{ds.path}: has no categories")
    anns = [by_image[im["id"]] for im in images]
    if not any(anns):
        raise WsisError(f"{ds.path}: no annotation with a box or mask to train on")
    if not boxes_only and not any("segmentation" in a and a["segmentation"] for al in anns for a in al):
        raise WsisError(f"{ds.path}: no annotation has a mask; give --boxes-only to train a detector, or make masks "
                        "first (wsis pseudolabel grabcut)")
    paths = [image_path(images_dir, im, dataset=ds.path) for im in images]
    return TrainSet(ds, images, paths, anns, [c["id"] for c in ds.categories], skipped)


_SAMPLE, _ORDER, _TORCH = range(3)


class DetectionImages(torch.utils.data.Dataset):
    """Item ``(index, epoch)`` -> ``(FloatTensor[3, H, W] in 0..1, target dict)``; flipped
    horizontally when the draw for ``(seed, epoch, index)`` says so."""

    def __init__(self, data: TrainSet, *, seed: int, flip: bool, masks: bool):
        self.data, self.seed, self.flip, self.masks = data, seed, flip, masks
        self.label = {c: k + 1 for k, c in enumerate(data.category_ids)}

    def __len__(self) -> int:
        return len(self.data.images)

    def __getitem__(self, key: tuple[int, int]):
        from wsis_cli.coco import rle_to_mask

        index, epoch = key
        im, anns = self.data.images[index], self.data.anns[index]
        try:
            rgb = read_sized_image(self.data.paths[index], im, self.data.ds.path)
            h, w = rgb.shape[:2]
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=np.float32).reshape(-1, 4)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            has = np.array([bool(a.get("segmentation")) for a in anns], dtype=bool)
            masks = np.zeros((len(anns), h, w), dtype=np.uint8) if self.masks else None
            if self.masks:
                for j, a in enumerate(anns):
                    if has[j]:
                        masks[j] = rle_to_mask(self.data.ds.rle(a))
        except WsisError as e:
            return FailedSample(str(e))
        if self.flip and keyed_rng(self.seed, epoch, index, _SAMPLE).random() < 0.5:
            rgb = rgb[:, ::-1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
            if masks is not None:
                masks = masks[:, :, ::-1]
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        target = {"boxes": torch.from_numpy(boxes[keep]),
                  "labels": torch.tensor([self.label[a["category_id"]] for a in anns], dtype=torch.int64)[
                      torch.from_numpy(keep)]}
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks[keep]))
            target["has_mask"] = torch.from_numpy(has[keep])
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
        return x, target


def read_sized_image(path, image: dict, dataset: str) -> np.ndarray:
    """:func:`read_image`, and a WsisError when the file's size is not the one its record gives."""
    rgb = read_image(path)
    if rgb.shape[:2] != (image["height"], image["width"]):
        raise WsisError(f"{path}: is {rgb.shape[1]}x{rgb.shape[0]} px but image {image['id']} of {dataset} says "
                        f"{image['width']}x{image['height']}")
    return rgb


def _collate(items: list) -> Any:
    for it in items:
        if isinstance(it, FailedSample):
            return it
    return [x for x, _ in items], [t for _, t in items]


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's batches of one epoch: a permutation for ``(seed, epoch)``, padded (from its
    start) to a multiple of ``world``, every ``world``-th index from ``rank``, cut into batches."""
    order = keyed_rng(seed, epoch, 0, _ORDER).permutation(n).tolist()
    if world > 1 and len(order) % world:
        order = (order * world)[: -(-len(order) // world) * world]  # cyclic, also when n < world
    mine = order[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def _torch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return int(keyed_rng(seed, epoch + 1, rank, _TORCH).integers(2**62))


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives take their tensors (NCCL: the process's GPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()


def dist_context(device: torch.device) -> DistContext:
    """The process group torchrun describes (``WORLD_SIZE`` > 1), initialised here: NCCL on
    CUDA, gloo on CPU. A single process gets a context of one."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    where = "cpu"
    if device.type == "cuda":
        where = f"cuda:{local}"
        torch.cuda.set_device(torch.device(where))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local, where)


# ----------------------------------------------------------------------------- training
_TRAIN_KEYS = ("weights", "batch_size", "lr", "warmup_iters", "flip", "scale_jitter", "amp", "seed", "only_valid",
               "iou_epochs", "iou_lr")
_MODEL_KEYS = ("architecture", "backbone", "category_ids", "min_size", "max_size", "fpn_channels", "head_channels",
               "iou_head", "iou_target")


def _lr_factor(it: int, total: int, warmup: int) -> float:
    if it < warmup:
        return 0.001 + (1.0 - 0.001) * it / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (it - warmup) / span)))


def _check_resume(state: dict, config: dict, train: dict, run: Path, world: int) -> None:
    if state.get("version") != VERSION:
        raise WsisError(f"{run}: checkpoint version {state.get('version')} is not {VERSION}; cannot resume it")
    old_cfg, old_train = state.get("config", {}), state.get("train", {})
    for k in _MODEL_KEYS:
        if old_cfg.get(k) != config[k]:
            raise WsisError(f"{run}: was trained with {k.replace('_', '-')} {old_cfg.get(k)!r}, not {config[k]!r}; "
                            "--resume needs the same options (or drop it to start afresh)")
    if old_train.get("data") != train["data"]:
        raise WsisError(f"{run}: was trained on another dataset (other images or annotations); --resume needs the "
                        "same dataset")
    for k in _TRAIN_KEYS:
        if old_train.get(k) != train[k]:
            raise WsisError(f"{run}: was trained with --{k.replace('_', '-')} {old_train.get(k)!r}, not {train[k]!r}; "
                            "--resume needs the same options (or drop it to start afresh)")
    if old_train.get("world_size", 1) != world:
        raise WsisError(f"{run}: was trained by {old_train.get('world_size', 1)} processes, not {world}; resume it "
                        "with the same number")


def _set_mode(model: torch.nn.Module, phase: str) -> None:
    """``seg``: everything but the IoU branch learns; ``iou``: only the IoU branch learns and
    batch-norm statistics stay fixed."""
    heads = model.roi_heads
    heads.mode = phase
    for p in model.parameters():
        p.requires_grad_(phase == "seg")
    if phase == "seg":
        _freeze_backbone_layers(model)
    if heads.iou_head is not None:
        for p in heads.iou_head.parameters():
            p.requires_grad_(phase == "iou")


def _freeze_backbone_layers(model: torch.nn.Module) -> None:
    """Keep torchvision's frozen layers frozen (its extractors freeze early stages of pretrained
    backbones by ``requires_grad``; :func:`_set_mode` must not thaw them)."""
    for name, p in model.backbone.body.named_parameters():
        if name in model._frozen_names:
            p.requires_grad_(False)


def _train_mode(model: torch.nn.Module, phase: str) -> None:
    model.train()
    if phase == "iou":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _optimizer(model: torch.nn.Module, phase: str, cfg: DetectorConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if phase == "iou":
        return torch.optim.Adam(params, lr=cfg.iou_lr)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=MOMENTUM)


def _min_sizes(size: int, jitter: bool) -> tuple[int, ...]:
    """GeneralizedRCNNTransform draws one of these per training image and uses the last at test time."""
    if not jitter:
        return (size,)
    return tuple(max(16, int(round(size * f))) for f in JITTER) + (size,)


def train_detector(
    ds: Dataset,
    images_dir: str | os.PathLike,
    cfg: DetectorConfig,
    *,
    run: str | os.PathLike,
    device: "str | torch.device" = "cpu",
    resume: bool = False,
    val: tuple[Dataset, str | os.PathLike] | None = None,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train on ``ds`` into the run folder ``run`` (see the module docstring). Returns
    ``{"run", "epochs", "iterations", "resumed_from", "history", "best"}``."""
    say = log or (lambda _msg: None)
    run = Path(run)
    dev = resolve_device(device) if isinstance(device, str) else device
    ctx = dist_context(dev)
    if ctx.world > 1 and dev.type == "cuda":
        dev = torch.device(ctx.device)
    if not ctx.main:
        say = lambda _msg: None  # noqa: E731 - only rank 0 talks
        progress = None
    use_amp = cfg.amp and dev.type == "cuda"
    if cfg.amp and not use_amp:
        say(f"warning: --amp needs CUDA; training in float32 on {dev.type}")

    data = training_set(ds, images_dir, only_valid=cfg.only_valid, boxes_only=cfg.boxes_only)
    for what, n in data.skipped.items():
        if n:
            say(f"left out {n} {what.replace('_', ' ')}{'' if what.endswith('images') else ' annotations'}")
    names = [str(c.get("name", c["id"])) for c in ds.categories]
    config = model_config(backbone=cfg.backbone, category_ids=data.category_ids, category_names=names,
                          min_size=cfg.min_size, max_size=cfg.max_size, boxes_only=cfg.boxes_only,
                          iou_head=cfg.iou_head, iou_target=cfg.iou_target, fpn_channels=cfg.fpn_channels,
                          head_channels=cfg.head_channels, pretrained=cfg.weights != "none")
    train = {k: getattr(cfg, k) for k in _TRAIN_KEYS}
    train.update(epochs=cfg.epochs, data=data.fingerprint(), world_size=ctx.world, keep_epochs=cfg.keep_epochs,
                 workers=cfg.workers)

    state, done, history, best = None, 0, [], {"epoch": None, "map50": None}
    last = run / "last.pt"
    if resume and last.is_file():
        state = load_checkpoint(last, kind=FORMAT)
        _check_resume(state, config, train, run, ctx.world)
        done, history, best = int(state["epoch"]), list(state["history"]), dict(state["best"])
        say(f"resuming {run} after epoch {done}")
    elif resume:
        say(f"{last} does not exist yet: training from the start")
    elif run.exists() and any(run.iterdir()) and not (run / "config.json").is_file():
        raise WsisError(f"{run}: exists and is not a wsis run folder; give a new or empty folder")
    elif (run / "config.json").is_file() and ctx.main:
        say(f"{run} holds a run: starting afresh, its checkpoints and metrics are replaced")
        for old in [run / "last.pt", run / "best.pt", run / "metrics.jsonl", *sorted(run.glob("epochs/epoch-*.pt"))]:
            old.unlink(missing_ok=True)
    if state is not None and state.get("phase") == "iou" and state["train"].get("epochs") != cfg.epochs:
        raise WsisError(f"{run}: its IoU branch is being trained after {state['train'].get('epochs')} segmentation "
                        f"epochs; --epochs cannot change now (give {state['train'].get('epochs')})")
    if val is not None:
        _check_val(val, data.category_ids)
    ctx.barrier()  # every process has checked the folder before rank 0 writes into it

    total_epochs = cfg.epochs + (cfg.iou_epochs if cfg.iou_head else 0)
    if done >= total_epochs:
        say(f"{run} already holds {done} epochs: nothing to train")
        return {"run": str(run), "epochs": done, "iterations": 0, "resumed_from": done, "history": history,
                "best": best}

    torch.manual_seed(_torch_seed(cfg.seed, -1))
    model = build_detector(config, weights=cfg.weights if state is None else "none")
    model._frozen_names = {n for n, p in model.backbone.body.named_parameters() if not p.requires_grad}
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as e:
            raise damaged_checkpoint(last, FORMAT, e) from None
    model.to(dev)
    if ctx.main:
        run.mkdir(parents=True, exist_ok=True)
        from wsis_cli.coco import write_json

        write_json(run / "config.json", {"format": FORMAT, "version": VERSION, "wsis_version": __version__,
                                         "model": config, "train": train})

    loader_data = DetectionImages(data, seed=cfg.seed, flip=cfg.flip, masks=not cfg.boxes_only)
    per_epoch = len(epoch_batches(len(data.images), cfg.batch_size, seed=cfg.seed, epoch=0, rank=ctx.rank,
                                  world=ctx.world))
    seg_total = cfg.epochs * per_epoch
    warmup = min(cfg.warmup_iters, seg_total // 4)
    grand_total = total_epochs * per_epoch
    say(f"training {config['architecture']} {cfg.backbone} (weights: {cfg.weights}) on {len(data.images)} images, "
        f"{config['num_classes']} classes, on {dev}{f' x {ctx.world} processes' if ctx.world > 1 else ''}: "
        f"{per_epoch} iterations per epoch")

    phase, optimizer, scaler, wrapped = None, None, None, model
    writer = _Writer()
    try:
        for epoch in range(done, total_epochs):
            want = "seg" if epoch < cfg.epochs else "iou"
            if want != phase:
                if want == "iou" and val is not None and best.get("epoch") and epoch == cfg.epochs:
                    if ctx.main:
                        writer.wait()
                    ctx.barrier()
                    model.load_state_dict(load_checkpoint(run / "best.pt", kind=FORMAT)["model"])
                    say(f"training the IoU branch on the best epoch's model (epoch {best['epoch']})")
                phase = want
                _set_mode(model, phase)
                optimizer = _optimizer(model, phase, cfg)
                scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
                if state is not None and state.get("phase") == phase and int(state["epoch"]) == epoch:
                    optimizer.load_state_dict(state["optimizer"])
                    if use_amp and state.get("scaler"):
                        scaler.load_state_dict(state["scaler"])
                state = None
                if ctx.world > 1:
                    wrapped = torch.nn.parallel.DistributedDataParallel(
                        model, device_ids=[dev.index] if dev.type == "cuda" else None)
                else:
                    wrapped = model
            model.transform.min_size = _min_sizes(cfg.min_size, cfg.scale_jitter)
            t0 = time.perf_counter()
            torch.manual_seed(_torch_seed(cfg.seed, epoch, ctx.rank))
            batches = epoch_batches(len(data.images), cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=ctx.rank,
                                    world=ctx.world)
            loader = torch.utils.data.DataLoader(
                loader_data, batch_sampler=[[(i, epoch) for i in b] for b in batches], collate_fn=_collate,
                num_workers=cfg.workers, pin_memory=dev.type == "cuda")
            _train_mode(model, phase)
            sums: dict[str, float] = {}
            seen = 0
            for b, batch in enumerate(loader):
                if isinstance(batch, FailedSample):
                    raise WsisError(batch.message)
                xs, ts = batch
                xs = [x.to(dev, non_blocking=True) for x in xs]
                ts = [{k: v.to(dev, non_blocking=True) for k, v in t.items()} for t in ts]
                it = epoch * per_epoch + b
                if phase == "seg":
                    f = _lr_factor(it, seg_total, warmup)
                    base = cfg.lr
                else:
                    f = 0.5 * (1.0 + math.cos(math.pi * (it - seg_total) / max(1, grand_total - seg_total)))
                    base = cfg.iou_lr
                for group in optimizer.param_groups:
                    group["lr"] = base * f
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                    losses = wrapped(xs, ts)
                if phase == "iou":  # the frozen RPN still reports its losses; only the IoU branch learns
                    losses = {"loss_iou": losses["loss_iou"]}
                loss = sum(v.float() for v in losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], CLIP_NORM)
                scaler.step(optimizer)
                scaler.update()
                value = float(loss.detach())
                if not math.isfinite(value) and not use_amp:
                    raise WsisError(f"training diverged (loss {value} at epoch {epoch + 1}, iteration {b + 1}): "
                                    "lower --lr or raise --warmup-iters")
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(xs)
                seen += len(xs)
                if progress:
                    progress(it + 1, grand_total)
            keys = sorted(sums)
            totals = ctx.sum([sums[k] for k in keys] + [float(seen)])
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "phase": phase, "lr": round(base * f, 8),  # at the epoch's last step
                      "loss": round(sum(totals[:-1]) / max(totals[-1], 1), 6),
                      "losses": {k: round(v / max(totals[-1], 1), 6) for k, v in zip(keys, totals[:-1])},
                      "images": int(totals[-1]), "seconds": round(seconds, 3),
                      "images_per_s": round(totals[-1] / max(seconds, 1e-9), 3)}
            if val is not None and ctx.main and phase == "seg":
                model.transform.min_size = (cfg.min_size,)
                record["val_map50"] = _val_map50(model, config, val, dev)
            ctx.barrier()
            # best.pt: with --val, the best segmentation epoch (the IoU branch is then trained on top of
            # it and the result written at the end); without --val, the final model, written at the end
            final = epoch + 1 == total_epochs
            write_best = final and (val is None or phase == "iou")
            if phase == "seg":
                score = record.get("val_map50")
                if val is None or best["map50"] is None or (score is not None and score > best["map50"]):
                    best = {"epoch": epoch + 1, "map50": score}
                    write_best = write_best or val is not None
            else:
                best = {**best, "iou_epoch": epoch + 1}
            history.append(record)
            if ctx.main:
                snapshot = _snapshot({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "scaler": scaler.state_dict() if use_amp else None})
                writer.submit(_save_epoch, run, snapshot, config, train, epoch + 1, phase, list(history), dict(best),
                              write_best, cfg.keep_epochs, record)
                extra = f", val mAP@0.5 {record['val_map50']:.3f}" if record.get("val_map50") is not None else ""
                say(f"epoch {epoch + 1}/{total_epochs} ({phase}): loss {record['loss']:.4f}{extra}, "
                    f"{record['images_per_s']:.1f} img/s")
            ctx.barrier()
    except KeyboardInterrupt:
        if history:
            say(f"interrupted: {run} holds {len(history)} of {total_epochs} epochs; rerun with --resume to continue")
        raise
    finally:
        writer.wait()
        if ctx.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return {"run": str(run), "epochs": total_epochs, "iterations": (total_epochs - done) * per_epoch,
            "resumed_from": done or None, "history": history, "best": best, "rank": ctx.rank}


def _check_val(val: tuple[Dataset, Any], category_ids: list[int]) -> None:
    """Fail before training, not after the first epoch, on a validation set that cannot be scored."""
    vds, vdir = val
    if [c["id"] for c in vds.categories] != list(category_ids):
        raise WsisError(f"{vds.path}: its categories {[c['id'] for c in vds.categories]} are not the training "
                        f"set's {list(category_ids)}; --val needs the same label set")
    if not vds.images:
        raise WsisError(f"{vds.path}: has no images to validate on")
    for im in vds.images:
        image_path(vdir, im, dataset=vds.path)


def _append_jsonl(path: Path, record: dict) -> None:
    """Rewrite ``metrics.jsonl`` as its lines up to this epoch plus ``record`` (atomically, so a
    resumed run never holds a duplicate or torn line)."""
    from wsis_cli.coco import write_atomic

    lines = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("epoch", 0) < record["epoch"]:
                    lines.append(line)
            except (ValueError, AttributeError):
                continue
    lines.append(json.dumps(record))
    write_atomic(path, lambda fh: fh.write("\n".join(lines) + "\n"), binary=False, what="a metrics file")


class _Writer:
    """Writes an epoch's files on a background thread while the next epoch trains; one job at a
    time, and a job's error surfaces at the next ``submit`` or ``wait``."""

    def __init__(self):
        self._pool = None
        self._job = None

    def submit(self, fn, *args) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsis-checkpoint")
        self._job = self._pool.submit(fn, *args)

    def wait(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.result()


def _snapshot(obj):
    """``obj`` with every tensor copied to the CPU, so training can go on while it is written."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


def _save_epoch(run: Path, state: dict, config, train, epoch: int, phase: str, history: list, best: dict,
                write_best: bool, keep: int, record: dict) -> None:
    """Write the per-epoch model file (the last ``keep``; -1 all), ``best.pt`` when asked, the
    epoch's ``metrics.jsonl`` line and, last, ``last.pt`` (everything resume needs)."""
    head = {"format": FORMAT, "version": VERSION, "wsis_version": __version__, "config": config, "train": train,
            "epoch": epoch, "phase": phase}
    model_only = {**head, "model": state["model"]}
    epoch_file = None
    if keep != 0:
        folder = run / "epochs"
        folder.mkdir(exist_ok=True)
        epoch_file = folder / f"epoch-{epoch:03d}.pt"
        save_checkpoint(epoch_file, model_only)
    if write_best:
        if epoch_file is not None:  # the same bytes: link them instead of writing them again
            tmp = run / f".best.pt.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(epoch_file, tmp)
                os.replace(tmp, run / "best.pt")
            except OSError:
                tmp.unlink(missing_ok=True)
                save_checkpoint(run / "best.pt", model_only)
        else:
            save_checkpoint(run / "best.pt", model_only)
    if keep > 0:
        for old in sorted((run / "epochs").glob("epoch-*.pt"))[:-keep]:
            old.unlink()
    _append_jsonl(run / "metrics.jsonl", record)
    # last: the epoch counts as done (for --resume) only once everything above is on disk
    save_checkpoint(run / "last.pt", {**head, **state, "history": history, "best": best})


def _val_map50(model, config: dict, val: tuple[Dataset, Any], dev: torch.device) -> float | None:
    from wsis_cli.metrics.coco_eval import evaluate

    vds, vdir = val
    results = predict_dataset(model, config, vds, vds.images, vdir, device=dev, score_thr=0.05)
    if not results:
        return 0.0
    res = evaluate(vds, results, iou_thrs=(0.5,), pred_path="validation predictions")
    value = res["mAP"][repr(0.5)]
    return None if value is None else round(float(value), 6)


# ----------------------------------------------------------------------------- loading and inference
def load_run(run: str | os.PathLike, *, device: "str | torch.device" = "cpu", which: str = "best"):
    """``(model in eval mode on device, config)`` from a run folder (its ``best.pt``, or ``last.pt``
    with ``which="last"``) or from a checkpoint file."""
    p = Path(run)
    if p.is_dir():
        f = p / f"{which}.pt"
        if not f.is_file():
            f = p / "last.pt"
        if not f.is_file():
            raise WsisError(f"{p}: not a wsis training run (no {which}.pt or last.pt)")
    else:
        f = p
    state = load_checkpoint(f, kind=FORMAT)
    if state.get("version") != VERSION:
        raise WsisError(f"{f}: checkpoint version {state.get('version')} is not {VERSION}")
    config = state.get("config")
    try:
        model = build_detector(config, weights="none")
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError, WsisError) as e:
        raise damaged_checkpoint(f, FORMAT, e) from None
    dev = resolve_device(device) if isinstance(device, str) else device
    model.transform.min_size = (int(config["min_size"]),)
    return model.to(dev).eval(), dict(config)


def _to_tensor(rgb: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(dev).permute(2, 0, 1).float().div_(255.0)


@torch.no_grad()
def detect(model, config: dict, images: list[np.ndarray], *, device: torch.device, score_thr: float = 0.05,
           max_dets: int = 100) -> list[Detections]:
    """Detections (with masks and predicted IoUs when the model has them) for RGB ``images``."""
    model.roi_heads.score_thresh = float(score_thr)
    model.roi_heads.detections_per_img = int(max_dets)
    cats = np.asarray(config["category_ids"], dtype=np.int64)
    out = model([_to_tensor(im, device) for im in images])
    dets = []
    for im, r in zip(images, out):
        h, w = im.shape[:2]
        labels = r["labels"].cpu().numpy()
        masks = (r["masks"][:, 0] > 0.5).cpu().numpy() if "masks" in r else None
        dets.append(Detections(r["boxes"].cpu().numpy(), r["scores"].cpu().numpy(), cats[labels - 1], h, w,
                               masks=masks, ious=r["iou"].cpu().numpy() if "iou" in r else None))
    return dets


@torch.no_grad()
def masks_in_boxes(model, config: dict, image: np.ndarray, boxes: np.ndarray, category_ids: np.ndarray, *,
                   device: torch.device) -> Detections:
    """The mask the model predicts inside each given box (``x1, y1, x2, y2``) for the given class:
    one detection per box, in order; ``scores`` are the box head's probability of that class."""
    from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image

    if config["architecture"] != "maskrcnn":
        raise WsisError("this model has no mask branch (trained with --boxes-only)")
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    index = {c: k + 1 for k, c in enumerate(config["category_ids"])}
    labels = torch.tensor([index[int(c)] for c in category_ids], dtype=torch.int64, device=device)
    if len(boxes) == 0:
        return Detections.empty(h, w, ious=config.get("iou_head", False))
    images, _ = model.transform([_to_tensor(image, device)])
    feats = model.backbone(images.tensors)
    sh, sw = images.image_sizes[0]
    scale = torch.tensor([sw / w, sh / h, sw / w, sh / h], device=device)
    b = torch.from_numpy(boxes).to(device) * scale
    heads = model.roi_heads
    logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, [b], images.image_sizes)))
    scores = torch.softmax(logits, -1)[torch.arange(len(labels), device=device), labels]
    x, up, mlogits = heads._mask_features(feats, [b], images.image_sizes)
    probs = maskrcnn_inference(mlogits, [labels])[0]
    masks = paste_masks_in_image(probs, torch.from_numpy(boxes).to(device), (h, w))[:, 0] > 0.5
    ious = heads.predict_ious(x, up, mlogits, [labels], [scores]).cpu().numpy() if heads.iou_head is not None else None
    return Detections(boxes, scores.cpu().numpy(), np.asarray(category_ids, dtype=np.int64), h, w,
                      masks=masks.cpu().numpy(), ious=ious)


def predict_dataset(model, config: dict, ds: Dataset | None, images: list[dict], images_dir, *,
                    device: torch.device, score_thr: float = 0.05, batch_size: int = 1,
                    transform: Callable[[dict, np.ndarray, Detections], Detections] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """COCO results for ``images`` (records with ``id`` and ``file_name``) under ``images_dir``;
    ``transform(image, rgb, detections)`` may rewrite each image's detections (fusion)."""
    was = model.training
    model.eval()
    results: list[dict] = []
    name = ds.path if ds is not None else str(images_dir)
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            rgbs = [read_sized_image(image_path(images_dir, im, dataset=name), im, name) for im in chunk]
            for im, rgb, det in zip(chunk, rgbs, detect(model, config, rgbs, device=device, score_thr=score_thr)):
                if transform is not None:
                    det = transform(im, rgb, det)
                results.extend(to_results(im["id"], det))
            if progress:
                progress(min(start + batch_size, len(images)), len(images))
    finally:
        model.train(was)
    return results

