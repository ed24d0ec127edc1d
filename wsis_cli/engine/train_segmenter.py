"""Train the segmenter (CCGR's SS branch) on class-level labels, and load it back.

The labels are the union of each class's instance masks in any COCO dataset (pseudo-labels from
``pseudolabel prm``, a Mask R-CNN's predictions, ground truth), with the ignore rules of
:mod:`wsis_cli.engine.segmenter_data`. The loss is the pixel-wise cross-entropy over background +
classes, ignored pixels left out (a batch with none to learn from adds nothing). Adam, as the
paper, with cosine decay; a pretrained trunk learns at :data:`BACKBONE_LR` of ``--lr`` (the
defaults give the paper's 1e-4 to an ImageNet trunk). Training is deterministic for a seed and
exact across ``resume``: augmentation and order come from generators keyed by ``(seed, epoch,
index)``, torch is reseeded every epoch, the learning rate is a function of the iteration.

Checkpoint (one file, rewritten atomically after every epoch; ``torch.load(weights_only=True)``)::

    {"format": "wsis-segmenter", "version": 1, "wsis_version": str,
     "config": {"backbone", "num_classes", "category_ids", "category_names", "size"},
     "train": {"weights", "epochs", "batch_size", "lr", "amp", "seed", "flip", "scale_jitter", "data"},
     "model": state_dict, "optimizer": state_dict, "scaler": state_dict | None, "epoch": epochs done,
     "history": [{"epoch", "loss", "accuracy", "miou", "seconds", "images_per_s", "load_share",
                  "threads"}, ...]}

``model`` holds the trunk under ``backbone.``, so ``--weights SEG.pt`` starts another ResNet from it.
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
from wsis_cli.engine.loop import (cosine_lr, amp_on, interrupt_note, keeps_torch_threads, make_loader, make_scaler,
                                  set_threads, train_epoch)
from wsis_cli.engine.rng import keyed_rng, torch_seed
from wsis_cli.engine.runs import check_checkpoint_out, resume_checkpoint
from wsis_cli.engine.segmenter_data import IGNORE, SegmentationImages, training_images
from wsis_cli.errors import WsisError
from wsis_cli.images import check_images, image_path
from wsis_cli.models.segmenter import Segmenter, build_segmenter

__all__ = ["FORMAT", "SegmenterConfig", "batch_plan", "confusion", "mean_iou", "train_segmenter", "load_segmenter"]

FORMAT = "wsis-segmenter"
VERSION = 1
# what a resumed checkpoint must share with the options
_KEYS = {"model_keys": ("category_ids", "category_names", "num_classes", "backbone", "size"),
         "train_keys": ("weights", "batch_size", "lr", "amp", "seed", "flip", "scale_jitter")}
WEIGHT_DECAY = 1e-4
BACKBONE_LR = 0.1  # a pretrained trunk's learning rate, as a fraction of --lr
_ORDER, _TORCH = 1, 2  # keyed_rng streams (segmenter_data draws on stream 0)


@dataclass(frozen=True)
class SegmenterConfig:
    """Options of :func:`train_segmenter` (the CLI's defaults)."""

    backbone: str = "resnet50"  # resnet50 | resnet18
    weights: str = "imagenet"   # imagenet | none | path to a state dict
    size: int = 448             # training side in px (images are resized to a square)
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3            # Adam's, for the head; a pretrained trunk gets BACKBONE_LR of it
    flip: bool = True           # random horizontal flips
    scale_jitter: bool = True   # random 0.75-1.25x scale, cropped or padded back to size
    amp: bool = False           # float16 autocast + gradient scaling (CUDA only)
    seed: int = 0
    workers: int = 0            # DataLoader worker processes (0: load in this process)
    threads: int | None = None  # torch CPU threads (None: loop.default_threads; 0: torch's default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"


def batch_plan(indices: list[int], batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of ``indices`` (image indices), in an order drawn for ``(seed, epoch)``."""
    order = keyed_rng(seed, epoch, 0, _ORDER).permutation(len(indices)).tolist()
    shuffled = [indices[i] for i in order]
    return [shuffled[s:s + batch_size] for s in range(0, len(shuffled), batch_size)]


def confusion(logits: torch.Tensor, labels: torch.Tensor, planes: int) -> torch.Tensor:
    """``LongTensor[planes, planes]``: row = label, column = predicted class (argmax of ``logits
    (FloatTensor[B, planes, H, W])``), over the pixels of ``labels (LongTensor[B, H, W])`` that
    are not IGNORE."""
    valid = labels != IGNORE
    idx = labels[valid] * planes + logits.argmax(dim=1)[valid]
    return torch.bincount(idx, minlength=planes * planes).view(planes, planes).cpu()


def mean_iou(conf: torch.Tensor | np.ndarray) -> float:
    """The mean over classes (background included) that occur in the labels or the predictions
    of ``TP / (TP + FP + FN)`` from a confusion matrix; 0 for an empty one."""
    c = np.asarray(conf, dtype=np.float64)
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp
    seen = union > 0
    return float((tp[seen] / union[seen]).mean()) if seen.any() else 0.0


# ----------------------------------------------------------------------------- training
def _data_fingerprint(ds: Dataset, indices: list[int]) -> str:
    rows = []
    for i in indices:
        im = ds.images[i]
        anns = [[a["category_id"], a.get("bbox"), a.get("segmentation"), a.get("iscrowd", 0)]
                for a in ds.anns_by_image[im["id"]]]
        rows.append([im["id"], im["file_name"], anns])
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def _records(ds: Dataset, cfg: SegmenterConfig, indices: list[int]) -> tuple[dict, dict]:
    """The checkpoint's ``config`` (what rebuilds the model) and ``train`` (what resume checks)."""
    config = {"backbone": cfg.backbone, "num_classes": len(ds.categories),
              "category_ids": [c["id"] for c in ds.categories],
              "category_names": [str(c.get("name", c["id"])) for c in ds.categories], "size": cfg.size}
    train = {"weights": cfg.weights, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
             "amp": cfg.amp, "seed": cfg.seed, "flip": cfg.flip, "scale_jitter": cfg.scale_jitter,
             "data": _data_fingerprint(ds, indices)}
    return config, train


def _model_and_optimizer(ds: Dataset, cfg: SegmenterConfig, state: dict | None, out: Path, dev: torch.device,
                         use_amp: bool):
    torch.manual_seed(torch_seed(cfg.seed, -1, stream=_TORCH))
    # a resumed run takes every weight from the checkpoint: no ImageNet fetch needed
    model = build_segmenter(cfg.backbone, num_classes=len(ds.categories),
                            weights=cfg.weights if state is None else "none")
    if state is not None:
        fill_model(model, state, out, FORMAT)
    model.to(dev)
    trunk = list(model.backbone.parameters())
    ids = {id(p) for p in trunk}
    head = [p for p in model.parameters() if id(p) not in ids]
    trunk_lr = cfg.lr * (BACKBONE_LR if cfg.pretrained else 1.0)
    optimizer = torch.optim.Adam([{"params": trunk, "lr": trunk_lr, "base_lr": trunk_lr},
                                  {"params": head, "lr": cfg.lr, "base_lr": cfg.lr}],
                                 lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer, make_scaler(use_amp, state.get("scaler") if state is not None else None)


def _prepare(ds: Dataset, images_dir, cfg: SegmenterConfig, say) -> tuple[list[int], list[Path]]:
    """The indices of the images that train and the paths of all images (the training ones checked)."""
    if not ds.categories:
        raise WsisError(f"{ds.path}: has no categories; the segmenter needs at least one class")
    indices, skipped = training_images(ds)
    if not indices:
        raise WsisError(f"{ds.path}: no image to train on; the segmenter learns from masks (pseudo or not), "
                        "not from image-level labels alone")
    if skipped:
        say(f"{skipped} of {len(ds.images)} images have only image-level labels (no mask, no box) and teach "
            "nothing pixel-wise: left out")
    paths = [Path(images_dir) / im["file_name"] for im in ds.images]
    for i in indices:
        image_path(images_dir, ds.images[i], dataset=ds.path)
    check_images([ds.images[i] for i in indices], [paths[i] for i in indices], ds.path)
    return indices, paths


@keeps_torch_threads
def train_segmenter(ds: Dataset, images_dir: str | os.PathLike, cfg: SegmenterConfig, *, out: str | os.PathLike,
                    device: "str | torch.device" = "cpu", resume: bool = False, overwrite: bool = False,
                    progress: Callable[[int, int], None] | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a :class:`Segmenter` on ``ds``'s class-level labels; checkpoint to ``out`` after every
    epoch (see the module docstring for its contents).

    With ``resume``, training continues from ``out`` when it exists (its model and training
    options, except ``epochs``, must equal ``cfg``'s); with ``overwrite`` an existing ``out`` is
    replaced; without either, an existing ``out`` is an error. ``progress(done, total)`` counts
    iterations; ``log`` gets a line per epoch and any note. Returns ``{"out", "epochs",
    "iterations", "resumed_from", "history"}``."""
    say = log or (lambda _msg: None)
    out = Path(out)
    indices, paths = _prepare(ds, images_dir, cfg, say)
    check_checkpoint_out(out, resume=resume, overwrite=overwrite)
    dev = resolve_device(device) if isinstance(device, str) else device
    use_amp = amp_on(cfg.amp, dev, say)
    threads = set_threads(cfg.threads, dev)
    config, train = _records(ds, cfg, indices)
    state = resume_checkpoint(out, kind=FORMAT, version=VERSION, config=config, train=train, epochs=cfg.epochs,
                              say=say, **_KEYS) if resume else None
    start, history = (int(state["epoch"]), list(state["history"])) if state is not None else (0, [])
    if start >= cfg.epochs and state is not None:
        say(f"{out} already holds {start} epochs (asked for {cfg.epochs}): nothing to train")
        return {"out": str(out), "epochs": start, "iterations": 0, "resumed_from": start, "history": history}
    model, optimizer, scaler = _model_and_optimizer(ds, cfg, state, out, dev, use_amp)
    del state
    data = SegmentationImages(ds, paths, size=cfg.size, seed=cfg.seed, flip=cfg.flip, scale_jitter=cfg.scale_jitter)
    iters = math.ceil(len(indices) / cfg.batch_size)
    total = cfg.epochs * iters
    planes = len(ds.categories) + 1
    conf = torch.zeros(planes, planes, dtype=torch.long)
    say(f"training a {cfg.backbone} segmenter (weights: {cfg.weights}) on {len(indices)} images, {planes - 1} "
        f"classes + background, on {dev}{f' ({threads} thread' + 's' * (threads != 1) + ')' if dev.type == 'cpu' else ''}"
        f": {iters} iterations per epoch")

    set_lr = cosine_lr(optimizer, total)

    def step(batch) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
        x, y = (t.to(dev, non_blocking=True) for t in batch)
        logits = model(x).float()
        valid = int((y != IGNORE).sum())
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum") / max(valid, 1)
        c = confusion(logits.detach(), y, planes)
        conf.add_(c)
        return {"loss": loss}, len(y), {"right": int(c.diag().sum()), "pixels": valid}

    with interrupt_note(say, lambda: f"interrupted: {out} holds {len(history)} of {cfg.epochs} epochs; rerun "
                                     "with --resume to continue" if history else None):
        for epoch in range(start, cfg.epochs):
            torch.manual_seed(torch_seed(cfg.seed, epoch, stream=_TORCH))
            conf.zero_()
            plan = batch_plan(indices, cfg.batch_size, seed=cfg.seed, epoch=epoch)
            loader = make_loader(data, [[(i, epoch) for i in b] for b in plan], collate=_stack, workers=cfg.workers,
                                 device=dev)
            model.train()
            r = train_epoch(loader, step, optimizer, scaler, set_lr=set_lr, epoch=epoch, first_iter=epoch * iters,
                            total_iters=total, use_amp=use_amp, device=dev, hint="lower --lr", progress=progress)
            history.append({"epoch": epoch + 1, "loss": r.sums["loss"] / r.seen,
                            "accuracy": r.extras["right"] / max(r.extras["pixels"], 1), "miou": mean_iou(conf),
                            "seconds": round(r.seconds, 3), "images_per_s": round(r.seen / max(r.seconds, 1e-9), 3),
                            "load_share": round(r.load_share, 4), "threads": threads})
            save_epoch(out, kind=FORMAT, version=VERSION, config=config, train=train, model=model, optimizer=optimizer,
                       scaler=scaler.state_dict() if use_amp else None, epoch=epoch + 1, history=history)
            h = history[-1]
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {h['loss']:.4f}, pixel accuracy {h['accuracy']:.3f}, "
                f"mIoU {h['miou']:.3f}, {h['seconds']:.1f} s, {h['images_per_s']:.1f} img/s, loading "
                f"{100 * h['load_share']:.0f}% of the time")
    return {"out": str(out), "epochs": cfg.epochs, "iterations": (cfg.epochs - start) * iters,
            "resumed_from": start or None, "history": history}


def _stack(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


# ----------------------------------------------------------------------------- loading
def load_segmenter(path: str | os.PathLike, device: "str | torch.device" = "cpu") -> tuple[Segmenter, dict]:
    """The trained segmenter in eval mode on ``device`` and its ``config`` (backbone, num_classes,
    category_ids, category_names, size). WsisError for a file that is not a segmenter checkpoint."""
    return load_model(path, kind=FORMAT, version=VERSION, device=device,
                      build=lambda c: build_segmenter(c["backbone"], num_classes=c["num_classes"], weights="none"))
