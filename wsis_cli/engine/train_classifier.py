"""Train the peak-stimulated classifier (PRM) from image-level labels, and load it back.

Every supervision level gives image-level labels: an image's positive classes are the
categories of its annotations; images without annotations are all-negative. Training is deterministic for a seed and exact
across ``resume``: augmentation, shuffling and batch sizes come from random generators keyed by
``(seed, epoch, index)``, the torch generator is reseeded every epoch, and the learning rate is a
function of the global iteration.

Checkpoint (one file, rewritten atomically after every epoch; readable with
``torch.load(weights_only=True)``)::

    {"format": "wsis-classifier", "version": 1, "wsis_version": str,
     "config": {"backbone", "num_classes", "category_ids", "category_names", "size", "peak_kernel"},
     "train": {"weights", "epochs", "batch_size", "lr", "amp", "seed", "data"},
     "model": state_dict, "optimizer": state_dict, "scaler": state_dict | None,
     "epoch": epochs done, "history": [{"epoch", "loss", "accuracy", "seconds"}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from wsis_cli.coco import Dataset
from wsis_cli.engine.checkpoint import fill_model, load_model, save_epoch
from wsis_cli.engine.device import resolve_device
from wsis_cli.engine.loop import (cosine_lr, FailedSample, amp_on, interrupt_note, keeps_torch_threads, make_loader,
                                  make_scaler, set_threads, train_epoch)
from wsis_cli.engine.rng import keyed_rng, torch_seed
from wsis_cli.engine.runs import check_checkpoint_out, resume_checkpoint
from wsis_cli.errors import WsisError
from wsis_cli.images import check_images, image_path, read_image
from wsis_cli.models.classifier import PeakClassifier, build_classifier, image_tensor

__all__ = [
    "FORMAT",
    "SCALES",
    "ClassifierConfig",
    "image_tensor",
    "image_labels",
    "augment",
    "batch_plan",
    "TrainImages",
    "train_classifier",
    "load_classifier",
]

FORMAT = "wsis-classifier"
VERSION = 1
# what a resumed checkpoint must share with the options
_KEYS = {"model_keys": ("category_ids", "category_names", "num_classes", "backbone", "size", "peak_kernel"),
         "train_keys": ("weights", "batch_size", "lr", "amp", "seed")}
SCALES = (0.75, 1.0, 1.25)  # each batch's side is one of these times --size, rounded to a multiple of 16
JITTER = 0.2  # brightness, contrast and saturation factors are drawn from [1 - JITTER, 1 + JITTER]
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
BACKBONE_LR = 0.1  # the pretrained backbone's learning rate, as a fraction of --lr


@dataclass(frozen=True)
class ClassifierConfig:
    """Options of :func:`train_classifier` (the CLI's defaults)."""

    backbone: str = "resnet50"  # resnet50 | resnet18
    weights: str = "imagenet"   # imagenet | none | path to a state dict
    size: int = 448             # training side in pixels (images are resized to a square)
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.01            # the head's; a pretrained backbone gets BACKBONE_LR of it
    amp: bool = False           # float16 autocast + gradient scaling (CUDA only)
    peak_kernel: int = 3        # window of the local maxima that peak stimulation pools
    seed: int = 0
    workers: int = 0            # DataLoader worker processes (0: load in this process)
    threads: int | None = None  # torch CPU threads (None: loop.default_threads; 0: torch's default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"


# ----------------------------------------------------------------------------- labels and augmentation
def image_labels(ds: Dataset) -> np.ndarray:
    """Multi-hot labels (float32[N_images, K]): image i has class k when one of its annotations
    names category ``ds.categories[k]``."""
    col = {c["id"]: k for k, c in enumerate(ds.categories)}
    row = {im["id"]: i for i, im in enumerate(ds.images)}
    y = np.zeros((len(ds.images), len(ds.categories)), dtype=np.float32)
    for a in ds.annotations:
        y[row[a["image_id"]], col[a["category_id"]]] = 1.0
    return y


_SAMPLE, _BATCH, _ORDER, _TORCH = range(4)  # independent random streams


def _side(size: int, scale: float) -> int:
    return max(32, int(size * scale / 16 + 0.5) * 16)


def augment(rgb: np.ndarray, side: int, rng: np.random.Generator) -> torch.Tensor:
    """One training view (FloatTensor[3, side, side], 0..1): resize, horizontal flip (p = 0.5),
    then brightness, contrast and saturation factors from [0.8, 1.2], all drawn from ``rng``."""
    flip = rng.random() < 0.5
    brightness, contrast, saturation = rng.uniform(1 - JITTER, 1 + JITTER, size=3)
    x = image_tensor(rgb[:, ::-1] if flip else rgb, side)
    x = x * float(brightness)
    grey = x[0] * 0.299 + x[1] * 0.587 + x[2] * 0.114
    x = (x - grey.mean()) * float(contrast) + grey.mean()
    grey = x[0] * 0.299 + x[1] * 0.587 + x[2] * 0.114
    x = (x - grey) * float(saturation) + grey
    return x.clamp_(0.0, 1.0)


def batch_plan(n: int, batch_size: int, size: int, *, seed: int, epoch: int) -> list[tuple[list[int], int]]:
    """One epoch's batches: ``(image indices, side)`` pairs. The order is a permutation drawn for
    ``(seed, epoch)``; each batch's side is ``size`` times a scale from :data:`SCALES` drawn for
    ``(seed, epoch, batch)``, rounded to a multiple of 16 (at least 32)."""
    order = keyed_rng(seed, epoch, 0, _ORDER).permutation(n).tolist()
    plan = []
    for b, start in enumerate(range(0, n, batch_size)):
        scale = SCALES[int(keyed_rng(seed, epoch, b, _BATCH).integers(len(SCALES)))]
        plan.append((order[start:start + batch_size], _side(size, scale)))
    return plan


class TrainImages(torch.utils.data.Dataset):
    """Augmented training samples; an item is addressed by ``(index, side, epoch)`` and is
    ``(FloatTensor[3, side, side], FloatTensor[K] labels)``, the same for the same key in any
    process."""

    def __init__(self, paths: list[Path], labels: np.ndarray, *, seed: int, names: list[str] | None = None):
        self.paths = [str(p) for p in paths]
        self.names = names  # how messages name each image, e.g. "image 7 of train.json"
        self.labels = torch.from_numpy(labels)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int]):
        index, side, epoch = key
        try:
            rgb = read_image(self.paths[index])
        except WsisError as e:
            return FailedSample(f"{e} ({self.names[index]})" if self.names else str(e))
        return augment(rgb, side, keyed_rng(self.seed, epoch, index, _SAMPLE)), self.labels[index]


def _stack(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


# ----------------------------------------------------------------------------- training
def _data_fingerprint(ds: Dataset, labels: np.ndarray) -> str:
    rows = [[im["id"], im["file_name"], np.flatnonzero(y).tolist()] for im, y in zip(ds.images, labels)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _records(ds: Dataset, cfg: ClassifierConfig, labels: np.ndarray) -> tuple[dict, dict]:
    """The checkpoint's ``config`` (what rebuilds the model) and ``train`` (what resume checks)."""
    config = {"backbone": cfg.backbone, "num_classes": len(ds.categories),
              "category_ids": [c["id"] for c in ds.categories],
              "category_names": [str(c.get("name", c["id"])) for c in ds.categories],
              "size": cfg.size, "peak_kernel": cfg.peak_kernel}
    train = {"weights": cfg.weights, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
             "amp": cfg.amp, "seed": cfg.seed, "data": _data_fingerprint(ds, labels)}
    return config, train


def _model_and_optimizer(ds: Dataset, cfg: ClassifierConfig, state: dict | None, out: Path, dev: torch.device,
                         use_amp: bool):
    torch.manual_seed(torch_seed(cfg.seed, -1, stream=_TORCH))
    # a resumed run takes every weight from the checkpoint: no ImageNet fetch needed
    model = build_classifier(backbone=cfg.backbone, num_classes=len(ds.categories),
                             weights=cfg.weights if state is None else "none", peak_kernel=cfg.peak_kernel)
    if state is not None:
        fill_model(model, state, out, FORMAT)
    model.to(dev)
    base_lr = cfg.lr * (BACKBONE_LR if cfg.pretrained else 1.0)
    optimizer = torch.optim.SGD(
        [{"params": list(model.backbone.parameters()), "lr": base_lr, "base_lr": base_lr},
         {"params": list(model.head.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}],
        lr=cfg.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer, make_scaler(use_amp, state.get("scaler") if state is not None else None)


@keeps_torch_threads
def train_classifier(
    ds: Dataset,
    images_dir: str | os.PathLike,
    cfg: ClassifierConfig,
    *,
    out: str | os.PathLike,
    device: "str | torch.device" = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a :class:`PeakClassifier` on ``ds``'s image-level labels; checkpoint to ``out``
    after every epoch (see the module docstring for its contents).

    With ``resume``, training continues from ``out`` when it exists (its model and training
    options, except ``epochs``, must equal ``cfg``'s); with ``overwrite`` an existing ``out`` is
    replaced; without either, an existing ``out`` is an error. ``progress(done, total)`` counts
    iterations; ``log`` gets a line per epoch and any warning. Returns ``{"out", "epochs",
    "iterations", "resumed_from", "history"}``."""
    say, out = log or (lambda _msg: None), Path(out)
    labels = _checked_labels(ds)
    paths = [image_path(images_dir, im, dataset=ds.path) for im in ds.images]
    check_images(ds.images, paths, ds.path, sizes=False)  # a broken file fails now, not hours into training
    check_checkpoint_out(out, resume=resume, overwrite=overwrite)
    dev = resolve_device(device) if isinstance(device, str) else device
    use_amp = amp_on(cfg.amp, dev, say)
    threads = set_threads(cfg.threads, dev)
    config, train = _records(ds, cfg, labels)
    state = resume_checkpoint(out, kind=FORMAT, version=VERSION, config=config, train=train, epochs=cfg.epochs,
                              say=say, **_KEYS) if resume else None
    start, history = (int(state["epoch"]), list(state["history"])) if state is not None else (0, [])
    if start >= cfg.epochs and state is not None:
        say(f"{out} already holds {start} epochs (asked for {cfg.epochs}): nothing to train")
        return {"out": str(out), "epochs": start, "iterations": 0, "resumed_from": start, "history": history}
    model, optimizer, scaler = _model_and_optimizer(ds, cfg, state, out, dev, use_amp)
    del state
    data = TrainImages(paths, labels, seed=cfg.seed, names=[f"image {im['id']} of {ds.path}" for im in ds.images])
    iters = math.ceil(len(paths) / cfg.batch_size)
    total = cfg.epochs * iters
    say(f"training {cfg.backbone} (weights: {cfg.weights}) on {len(paths)} images, {len(ds.categories)} classes, "
        f"on {dev}{f' ({threads} thread' + 's' * (threads != 1) + ')' if dev.type == 'cpu' else ''}: "
        f"{iters} iterations per epoch")

    set_lr = cosine_lr(optimizer, total)

    def step(batch) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
        x, y = (t.to(dev, non_blocking=True) for t in batch)
        scores = model.scores(x)
        loss = F.multilabel_soft_margin_loss(scores.float(), y)
        right = int(((scores.detach() > 0) == (y > 0.5)).sum())
        return {"loss": loss}, len(y), {"right": right, "labels": y.numel()}

    with interrupt_note(say, lambda: f"interrupted: {out} holds {len(history)} of {cfg.epochs} epochs; rerun "
                                     "with --resume to continue" if history else None):
        for epoch in range(start, cfg.epochs):
            torch.manual_seed(torch_seed(cfg.seed, epoch, stream=_TORCH))
            plan = batch_plan(len(paths), cfg.batch_size, cfg.size, seed=cfg.seed, epoch=epoch)
            loader = make_loader(data, [[(i, side, epoch) for i in idx] for idx, side in plan], collate=_stack,
                                 workers=cfg.workers, device=dev)
            model.train()
            r = train_epoch(loader, step, optimizer, scaler, set_lr=set_lr, epoch=epoch, first_iter=epoch * iters,
                            total_iters=total, use_amp=use_amp, device=dev, hint="lower --lr", progress=progress)
            record = {"epoch": epoch + 1, "loss": r.sums["loss"] / r.seen,
                      "accuracy": r.extras["right"] / max(r.extras["labels"], 1), "seconds": round(r.seconds, 3),
                      "images_per_s": round(r.seen / max(r.seconds, 1e-9), 3), "load_share": round(r.load_share, 4),
                      "threads": threads}
            history.append(record)
            save_epoch(out, kind=FORMAT, version=VERSION, config=config, train=train, model=model, optimizer=optimizer,
                       scaler=scaler.state_dict() if use_amp else None, epoch=epoch + 1, history=history)
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}, accuracy {record['accuracy']:.3f}, "
                f"{record['seconds']:.1f} s, {record['images_per_s']:.1f} img/s, loading "
                f"{100 * record['load_share']:.0f}% of the time")
    return {"out": str(out), "epochs": cfg.epochs, "iterations": (cfg.epochs - start) * iters,
            "resumed_from": start or None, "history": history}


def _checked_labels(ds: Dataset) -> np.ndarray:
    if not ds.images:
        raise WsisError(f"{ds.path}: has no images to train on")
    if not ds.categories:
        raise WsisError(f"{ds.path}: has no categories; the classifier needs at least one class")
    labels = image_labels(ds)
    if not labels.any():
        raise WsisError(f"{ds.path}: no image has a label; the classifier learns from image-level labels "
                        "(annotations of any kind)")
    return labels


# ----------------------------------------------------------------------------- loading
def load_classifier(path: str | os.PathLike, *, device: "str | torch.device" = "cpu") -> tuple[PeakClassifier, dict]:
    """The trained classifier in eval mode on ``device`` and its ``config`` (backbone,
    num_classes, category_ids, category_names, size, peak_kernel). WsisError for a file that is
    not a classifier checkpoint."""
    return load_model(path, kind=FORMAT, version=VERSION, device=device,
                      build=lambda c: build_classifier(backbone=c["backbone"], num_classes=c["num_classes"],
                                                       weights="none", peak_kernel=c["peak_kernel"]))
