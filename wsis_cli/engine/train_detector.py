"""Train a Mask R-CNN (or, ``boxes_only``, a Faster R-CNN) on any mix of supervision (see
:mod:`wsis_cli.engine.detection_data` for what it trains on) into a run folder (see
:mod:`wsis_cli.engine.runs`).

Schedule: ``epochs`` of phase ``seg`` (``det`` for a box-only model: boxes, no masks; SGD, warm-up
then cosine decay, flips, scale jitter), then, with an IoU head, ``iou_epochs`` in which all but the
IoU branch is frozen and only it learns (Adam, L1 loss on ``t(IoU)``): the paper's best recipe.
With a validation set the IoU branch is trained on the best segmentation epoch's weights.

``best.pt`` is the model of the best epoch by validation mAP@0.5, with the IoU branch trained on
it; without validation, the final model, written when the run ends.

Determinism: the image order, flips and the torch seed of every epoch come from ``(seed,
epoch)``, so ``resume`` continues exactly where the run stopped. Under ``torchrun`` (``WORLD_SIZE``
> 1) the model is wrapped in DistributedDataParallel; each process takes every K-th image of the
epoch's order (padded to a multiple of K) and rank 0 writes the files.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from wsis_cli import __version__
from wsis_cli.coco import Dataset
from wsis_cli.engine.checkpoint import damaged_checkpoint, load_checkpoint
from wsis_cli.engine.detection_data import (TORCH, DetectionImages, TrainSet, check_validation_set, collate_detection,
                                            epoch_batches, training_set)
from wsis_cli.engine.device import resolve_device
from wsis_cli.engine.distributed import DistContext, dist_context
from wsis_cli.engine.loop import (amp_on, interrupt_note, keeps_torch_threads, make_loader, make_scaler, set_threads,
                                  train_epoch)
from wsis_cli.engine.predictor import Predictor
from wsis_cli.engine.rng import torch_seed
from wsis_cli.engine.runs import EpochWriter, check_resume, commit_epoch, prepare_run, snapshot
from wsis_cli.errors import WsisError
from wsis_cli.models.box_losses import PAIRWISE_WARMUP
from wsis_cli.models.detector import FORMAT, VERSION, build_detector, model_config

__all__ = ["FORMAT", "DetectorConfig", "train_detector"]

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
CLIP_NORM = 10.0
JITTER = (0.8, 0.9, 1.1, 1.2)  # training min sizes: --min-size times these, or --min-size itself
TRAIN_KEYS = ("weights", "batch_size", "lr", "warmup_iters", "flip", "scale_jitter", "amp", "seed", "only_valid",
              "iou_epochs", "iou_lr", "only_invalid")
MODEL_KEYS = ("architecture", "backbone", "category_ids", "min_size", "max_size", "fpn_channels", "head_channels",
              "iou_head", "iou_target", "neck", "box_loss")
ADDED_LATER = {"neck": "fpn", "box_loss": "none", "only_invalid": False}  # what a run made before these options had


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
    only_invalid: bool = False      # train on wsis.valid false (and unflagged); valid ones are ignore regions
    boxes_only: bool = False
    box_loss: str = "none"          # none | boxinst: what trains the mask head on box-only annotations
    iou_head: bool = False
    iou_target: str = "sqrt"
    iou_epochs: int = 3
    iou_lr: float = 1e-3
    fpn_channels: int = 256
    head_channels: int = 1024
    neck: str = "fpn"               # fpn | efpn (models/necks.py: the Enhanced-FPN)
    keep_epochs: int = 3            # per-epoch model files kept (-1: all, 0: none)
    threads: int | None = None      # torch CPU threads (None: loop.default_threads; 0: torch's default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.iou_epochs if self.iou_head else 0)


# ----------------------------------------------------------------------------- schedule and phases
def _lr_factor(it: int, total: int, warmup: int) -> float:
    if it < warmup:
        return 0.001 + (1.0 - 0.001) * it / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (it - warmup) / span)))


def _min_sizes(size: int, jitter: bool) -> tuple[int, ...]:
    """GeneralizedRCNNTransform draws one of these per training image and uses the last at test time."""
    if not jitter:
        return (size,)
    return tuple(max(16, int(round(size * f))) for f in JITTER) + (size,)


def _set_mode(model: torch.nn.Module, phase: str, frozen: set[str]) -> None:
    """``seg``: everything but the IoU branch learns, except the backbone layers torchvision froze
    (``frozen``: their names); ``iou``: only the IoU branch learns."""
    heads = model.roi_heads
    heads.mode = phase
    for p in model.parameters():
        p.requires_grad_(phase == "seg")
    if phase == "seg":
        for name, p in model.backbone.body.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
    if heads.iou_head is not None:
        for p in heads.iou_head.parameters():
            p.requires_grad_(phase == "iou")


def _train_mode(model: torch.nn.Module, phase: str) -> None:
    """Train mode; in the IoU phase batch-norm statistics stay fixed."""
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


@dataclass
class _Phase:
    """The optimiser state of one phase (``seg`` or ``iou``) and the model as the loop calls it."""

    name: str
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    wrapped: torch.nn.Module
    label: str  # what logs, metrics.jsonl and checkpoints call it: det for the seg phase of a box-only model


def _start_phase(model, name: str, cfg: DetectorConfig, frozen: set[str], state: dict | None, epoch: int,
                 use_amp: bool, ctx: DistContext, dev: torch.device) -> _Phase:
    _set_mode(model, name, frozen)
    optimizer = _optimizer(model, name, cfg)
    label = "det" if name == "seg" and cfg.boxes_only else name  # a box-only run's older last.pt says seg
    resumed = state is not None and state.get("phase") in (name, label) and int(state["epoch"]) == epoch
    if resumed:
        optimizer.load_state_dict(state["optimizer"])
    scaler = make_scaler(use_amp, state.get("scaler") if resumed else None)
    wrapped = model
    if ctx.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    return _Phase(name, optimizer, scaler, wrapped, label)


# ----------------------------------------------------------------------------- training
@dataclass
class _Run:
    """One training run's fixed facts: where, on what, with which model config."""

    path: Path
    data: TrainSet
    config: dict
    train: dict
    ctx: DistContext
    dev: torch.device
    use_amp: bool
    say: Callable[[str], None]
    threads: int


def _setup(ds, images_dir, cfg: DetectorConfig, run: Path, device, resume: bool, overwrite: bool, val,
           log, warn=None) -> tuple[_Run, dict | None]:
    say = log or (lambda _msg: None)
    dev = resolve_device(device) if isinstance(device, str) else device
    ctx = dist_context(dev)
    if ctx.world > 1 and dev.type == "cuda":
        dev = torch.device(ctx.device)
    if not ctx.main:
        say = warn = lambda _msg: None  # noqa: E731 - only rank 0 talks
    use_amp = amp_on(cfg.amp, dev, say)
    threads = set_threads(cfg.threads, dev)
    data = training_set(ds, images_dir, only_valid=cfg.only_valid, only_invalid=cfg.only_invalid,
                        boxes_only=cfg.boxes_only, box_loss=cfg.box_loss)
    for text, warning in data.notes:  # what was left out, ignored or trained otherwise; warnings stay under --quiet
        (warn if warning and warn else say)(text)
    names = [str(c.get("name", c["id"])) for c in ds.categories]
    config = model_config(backbone=cfg.backbone, category_ids=data.category_ids, category_names=names,
                          min_size=cfg.min_size, max_size=cfg.max_size, boxes_only=cfg.boxes_only,
                          iou_head=cfg.iou_head, iou_target=cfg.iou_target, fpn_channels=cfg.fpn_channels,
                          head_channels=cfg.head_channels, pretrained=cfg.weights != "none", neck=cfg.neck,
                          box_loss=cfg.box_loss)
    train = {k: getattr(cfg, k) for k in TRAIN_KEYS}
    train.update(epochs=cfg.epochs, data=data.fingerprint(), world_size=ctx.world, keep_epochs=cfg.keep_epochs,
                 workers=cfg.workers)
    r = _Run(run, data, config, train, ctx, dev, use_amp, say, threads)
    state = prepare_run(run, kind=FORMAT, resume=resume, overwrite=overwrite, main=ctx.main, say=say)
    if state is not None:
        check_resume(state, run=run, version=VERSION, config=config, train=train, model_keys=MODEL_KEYS,
                     train_keys=TRAIN_KEYS, world=ctx.world, defaults=ADDED_LATER)
        say(f"resuming {run} after epoch {int(state['epoch'])}")
        if state.get("phase") == "iou" and state["train"].get("epochs") != cfg.epochs:
            raise WsisError(f"{run}: its IoU branch is being trained after {state['train'].get('epochs')} "
                            f"segmentation epochs; --epochs cannot change now (give {state['train'].get('epochs')})")
    if val is not None:
        check_validation_set(*val, data.category_ids)
    ctx.barrier()  # every process has checked the folder before rank 0 writes into it
    return r, state


def _model(r: _Run, cfg: DetectorConfig, state: dict | None) -> tuple[torch.nn.Module, set[str]]:
    """The detector (from the checkpoint when resuming) on the run's device, and the names of the
    backbone parameters torchvision froze; rank 0 writes ``config.json``."""
    from wsis_cli.coco import write_json

    torch.manual_seed(torch_seed(cfg.seed, -1, stream=TORCH))
    model = build_detector(r.config, weights=cfg.weights if state is None else "none")
    frozen = {n for n, p in model.backbone.body.named_parameters() if not p.requires_grad}
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as e:
            raise damaged_checkpoint(r.path / "last.pt", FORMAT, e) from None
    model.to(r.dev)
    if r.ctx.main:
        r.path.mkdir(parents=True, exist_ok=True)
        write_json(r.path / "config.json", {"format": FORMAT, "version": VERSION, "wsis_version": __version__,
                                            "model": r.config, "train": r.train})
    return model, frozen


@keeps_torch_threads
def train_detector(
    ds: Dataset,
    images_dir: str | os.PathLike,
    cfg: DetectorConfig,
    *,
    run: str | os.PathLike,
    device: "str | torch.device" = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    val: tuple[Dataset, str | os.PathLike] | None = None,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train on ``ds`` into the run folder ``run`` (see the module docstring): ``resume`` continues
    the run there, ``overwrite`` replaces it (without either, a run there is an error). Returns
    ``{"run", "epochs", "iterations", "resumed_from", "history", "best", "rank"}``."""
    r, state = _setup(ds, images_dir, cfg, Path(run), device, resume, overwrite, val, log, warn)
    done = int(state["epoch"]) if state is not None else 0
    history = list(state["history"]) if state is not None else []
    best = dict(state["best"]) if state is not None else {"epoch": None, "map50": None}
    if done >= cfg.total_epochs:
        r.say(f"{r.path} already holds {done} epochs: nothing to train")
        return {"run": str(r.path), "epochs": done, "iterations": 0, "resumed_from": done, "history": history,
                "best": best}
    model, frozen = _model(r, cfg, state)
    per_epoch = len(epoch_batches(len(r.data.images), cfg.batch_size, seed=cfg.seed, epoch=0, rank=r.ctx.rank,
                                  world=r.ctx.world))
    r.say(f"training {r.config['architecture']} {cfg.backbone}{'' if cfg.neck == 'fpn' else ' ' + cfg.neck} "
          f"(weights: {cfg.weights}) on {len(r.data.images)} images, {r.config['num_classes']} classes, on {r.dev}"
          f"{f' ({r.threads} thread' + 's' * (r.threads != 1) + ')' if r.dev.type == 'cpu' else ''}"
          f"{f' x {r.ctx.world} processes' if r.ctx.world > 1 else ''}: {per_epoch} iterations per epoch")
    writer = EpochWriter()
    note = f"interrupted: {r.path} holds {{}} of {cfg.total_epochs} epochs; rerun with --resume to continue"
    try:
        with interrupt_note(r.say, lambda: note.format(len(history)) if history else None):
            _epochs(r, cfg, model, frozen, state, done, history, best, per_epoch, writer, val,
                    progress if r.ctx.main else None)
    finally:
        writer.wait()
        r.ctx.close()
    return {"run": str(r.path), "epochs": cfg.total_epochs, "iterations": (cfg.total_epochs - done) * per_epoch,
            "resumed_from": done or None, "history": history, "best": best, "rank": r.ctx.rank}


def _epochs(r: _Run, cfg: DetectorConfig, model, frozen, state, done: int, history: list, best: dict,
            per_epoch: int, writer: EpochWriter, val, progress) -> None:
    """Train epochs ``done`` .. ``cfg.total_epochs - 1``, committing each (``history`` and
    ``best`` are updated in place)."""
    seg_total = cfg.epochs * per_epoch
    warmup = min(cfg.warmup_iters, seg_total // 4)
    model.roi_heads.pairwise_warmup = max(1, min(PAIRWISE_WARMUP, seg_total // 10))  # BoxInst: 10k of 90k
    grand_total = cfg.total_epochs * per_epoch
    loader_data = DetectionImages(r.data, seed=cfg.seed, flip=cfg.flip, masks=not cfg.boxes_only)
    phase: _Phase | None = None
    for epoch in range(done, cfg.total_epochs):
        want = "seg" if epoch < cfg.epochs else "iou"
        if phase is None or want != phase.name:
            if want == "iou" and val is not None and best.get("epoch") and epoch == cfg.epochs:
                if r.ctx.main:
                    writer.wait()
                r.ctx.barrier()
                model.load_state_dict(load_checkpoint(r.path / "best.pt", kind=FORMAT)["model"])
                r.say(f"training the IoU branch on the best epoch's model (epoch {best['epoch']})")
            phase = _start_phase(model, want, cfg, frozen, state, epoch, r.use_amp, r.ctx, r.dev)
            state = None

        def set_lr(it: int, phase=phase) -> float:
            if phase.name == "seg":
                lr = cfg.lr * _lr_factor(it, seg_total, warmup)
            else:
                lr = cfg.iou_lr * (0.5 * (1.0 + math.cos(math.pi * (it - seg_total) / max(1, grand_total - seg_total))))
            for group in phase.optimizer.param_groups:
                group["lr"] = lr
            return lr

        def step(batch, phase=phase):
            xs, ts = batch
            xs = [x.to(r.dev, non_blocking=True) for x in xs]
            ts = [{k: v.to(r.dev, non_blocking=True) for k, v in t.items()} for t in ts]
            losses = phase.wrapped(xs, ts)
            if phase.name == "iou":  # the frozen RPN still reports its losses; only the IoU branch learns
                losses = {"loss_iou": losses["loss_iou"]}
            return losses, len(xs), {}

        model.transform.min_size = _min_sizes(cfg.min_size, cfg.scale_jitter)
        torch.manual_seed(torch_seed(cfg.seed, epoch, stream=TORCH, index=r.ctx.rank))
        batches = epoch_batches(len(r.data.images), cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=r.ctx.rank,
                                world=r.ctx.world)
        loader = make_loader(loader_data, [[(i, epoch) for i in b] for b in batches], collate=collate_detection,
                             workers=cfg.workers, device=r.dev)
        _train_mode(model, phase.name)
        result = train_epoch(loader, step, phase.optimizer, phase.scaler, set_lr=set_lr, epoch=epoch,
                             first_iter=epoch * per_epoch, total_iters=grand_total, use_amp=r.use_amp, device=r.dev,
                             clip_norm=CLIP_NORM, hint="lower --lr or raise --warmup-iters", progress=progress)
        record = _record(r, result, epoch, phase.label)
        if val is not None and r.ctx.main and phase.name == "seg":
            model.transform.min_size = (cfg.min_size,)
            record["val_map50"] = Predictor(model, r.config, r.dev).map50(*val)
        r.ctx.barrier()
        write_best = _update_best(best, record, phase.name, final=epoch + 1 == cfg.total_epochs,
                                  validated=val is not None)
        history.append(record)
        if r.ctx.main:
            _commit(r, cfg, model, phase, epoch, history, best, write_best, record, writer)
        r.ctx.barrier()


def _record(r: _Run, result, epoch: int, phase: str) -> dict:
    """The epoch's ``metrics.jsonl`` line: losses averaged over every process's images."""
    keys = sorted(result.sums)
    totals = r.ctx.sum([result.sums[k] for k in keys] + [float(result.seen)])
    n = max(totals[-1], 1)
    return {"epoch": epoch + 1, "phase": phase, "lr": round(result.lr, 8),  # at the epoch's last step
            "loss": round(sum(totals[:-1]) / n, 6),
            "losses": {k: round(v / n, 6) for k, v in zip(keys, totals[:-1])},
            "images": int(totals[-1]), "seconds": round(result.seconds, 3),
            "images_per_s": round(totals[-1] / max(result.seconds, 1e-9), 3),
            "load_share": round(result.load_share, 4), "threads": r.threads}


def _update_best(best: dict, record: dict, phase: str, *, final: bool, validated: bool) -> bool:
    """Update ``best`` after an epoch; True when ``best.pt`` is to be written now: with
    validation, at a better segmentation epoch (the IoU branch is then trained on top of it and
    the result written at the end); without, the final model at the end."""
    write_best = final and (not validated or phase == "iou")
    if phase == "seg":
        score = record.get("val_map50")
        if not validated or best["map50"] is None or (score is not None and score > best["map50"]):
            best.clear()
            best.update({"epoch": record["epoch"], "map50": score})
            write_best = write_best or validated
    else:
        best["iou_epoch"] = record["epoch"]
    return write_best


def _commit(r: _Run, cfg: DetectorConfig, model, phase: _Phase, epoch: int, history: list, best: dict,
            write_best: bool, record: dict, writer: EpochWriter) -> None:
    state = snapshot({"model": model.state_dict(), "optimizer": phase.optimizer.state_dict(),
                      "scaler": phase.scaler.state_dict() if r.use_amp else None})
    head = {"format": FORMAT, "version": VERSION, "wsis_version": __version__, "config": r.config, "train": r.train,
            "epoch": epoch + 1, "phase": phase.label}
    writer.submit(lambda: commit_epoch(r.path, head, state, history=list(history), best=dict(best),
                                       write_best=write_best, keep=cfg.keep_epochs, record=record))
    extra = f", val mAP@0.5 {record['val_map50']:.3f}" if record.get("val_map50") is not None else ""
    r.say(f"epoch {epoch + 1}/{cfg.total_epochs} ({phase.label}): loss {record['loss']:.4f}{extra}, "
          f"{record['images_per_s']:.1f} img/s, loading {100 * record['load_share']:.0f}% of the time")
