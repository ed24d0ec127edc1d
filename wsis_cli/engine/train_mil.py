"""Train the MIL branch (a WSDDN head, :mod:`wsis_cli.models.mil`) on the bags of ``pseudolabel
bags``, and load it back.

Adam (the paper's solver; weight decay 1e-4) with a cosine learning-rate decay over the run; the
bags of ``batch_size`` images per step. Training is deterministic for a seed and exact across
``resume``: the image order is a permutation keyed by ``(seed, epoch)``, flips come from
generators keyed by ``(seed, epoch, index)`` (:mod:`wsis_cli.engine.mil_data`), the torch
generator is reseeded every epoch, and the learning rate is a function of the global iteration.

Checkpoint (one file, rewritten atomically after every epoch; ``torch.load(weights_only=True)``)::

    {"format": "wsis-mil", "version": 1, "wsis_version": str,
     "config": {"backbone", "num_classes", "category_ids", "category_names", "size", "reduce", "hidden",
                "roi_size"},
     "train": {"weights", "epochs", "batch_size", "lr", "seed", "data"},
     "model": state_dict, "optimizer": state_dict, "epoch": epochs done,
     "history": [{"epoch", "loss", "accuracy", "seconds", "images_per_s", "load_share", "threads"}, ...]}

``accuracy`` is the share of bags whose highest class score ``phi`` is their label.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from wsis_cli.coco import Dataset
from wsis_cli.engine.checkpoint import fill_model, load_model, save_epoch
from wsis_cli.engine.device import resolve_device
from wsis_cli.engine.loop import cosine_lr, interrupt_note, keeps_torch_threads, make_loader, make_scaler, set_threads, train_epoch
from wsis_cli.engine.mil_data import BagImages, bags_fingerprint, collate_bags, image_bags
from wsis_cli.engine.rng import keyed_rng, torch_seed
from wsis_cli.engine.runs import check_checkpoint_out, resume_checkpoint
from wsis_cli.errors import WsisError
from wsis_cli.images import check_images
from wsis_cli.models.mil import WSDDN, build_mil, mil_loss

__all__ = ["FORMAT", "MILConfig", "batch_plan", "train_mil", "load_mil"]

FORMAT = "wsis-mil"
VERSION = 1
# what a resumed checkpoint must share with the options
_KEYS = {"model_keys": ("category_ids", "category_names", "num_classes", "backbone", "size", "reduce", "hidden",
                        "roi_size"),
         "train_keys": ("weights", "batch_size", "lr", "seed")}
WEIGHT_DECAY = 1e-4
_ORDER, _TORCH = 1, 2  # keyed streams (mil_data's flips use 0)


@dataclass(frozen=True)
class MILConfig:
    """Options of :func:`train_mil` (the CLI's defaults)."""

    backbone: str = "resnet50"  # resnet50 | resnet18
    weights: str = "imagenet"   # imagenet | none | path to a state dict (a segmenter checkpoint too)
    size: int = 448             # images are resized to a square of this side
    epochs: int = 20
    batch_size: int = 2         # images (with all their bags) per step
    lr: float = 1e-4            # Adam
    reduce: int = 256           # channels of the 1x1 reduction before RoIAlign
    hidden: int = 1024          # width of the two fully connected layers
    roi_size: int = 7           # RoIAlign output side
    seed: int = 0
    workers: int = 0
    threads: int | None = None  # torch CPU threads (None: loop.default_threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_plan(n: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of item indices: a permutation drawn for ``(seed, epoch)``, cut in
    runs of ``batch_size``."""
    order = keyed_rng(seed, epoch, 0, _ORDER).permutation(n).tolist()
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]


def _records(ds: Dataset, cfg: MILConfig, data: str) -> tuple[dict, dict]:
    config = {"backbone": cfg.backbone, "num_classes": len(ds.categories),
              "category_ids": [c["id"] for c in ds.categories],
              "category_names": [str(c.get("name", c["id"])) for c in ds.categories],
              "size": cfg.size, "reduce": cfg.reduce, "hidden": cfg.hidden, "roi_size": cfg.roi_size}
    train = {"weights": cfg.weights, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
             "seed": cfg.seed, "data": data}
    return config, train


def _model_and_optimizer(ds: Dataset, cfg: MILConfig, state: dict | None, out: Path, dev: torch.device):
    torch.manual_seed(torch_seed(cfg.seed, -1, stream=_TORCH))
    model = build_mil(backbone=cfg.backbone, num_classes=len(ds.categories),
                      weights=cfg.weights if state is None else "none", reduce=cfg.reduce, hidden=cfg.hidden,
                      roi_size=cfg.roi_size, frozen_bn=cfg.weights != "none")
    if state is not None:
        fill_model(model, state, out, FORMAT)
    model.to(dev)
    optimizer = torch.optim.Adam([{"params": list(model.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}],
                                 lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer


def _prepare(ds: Dataset, images_dir, cfg: MILConfig, out: Path, resume: bool, overwrite: bool, say):
    if len(ds.categories) < 2:  # one class: the class softmax is 1, every bag scores 1, nothing to learn
        raise WsisError(f"{ds.path}: has {len(ds.categories)} categories; the MIL branch (WSDDN's softmax over "
                        "classes) needs at least 2. With one class, refine the seed boxes with `pseudolabel ccgr` "
                        "directly")
    items = image_bags(ds, images_dir)
    check_images([it.image for it in items], [it.path for it in items], ds.path, sizes=False)
    check_checkpoint_out(out, resume=resume, overwrite=overwrite)
    config, train = _records(ds, cfg, bags_fingerprint(items))
    state = resume_checkpoint(out, kind=FORMAT, version=VERSION, config=config, train=train, epochs=cfg.epochs,
                              say=say, **_KEYS) if resume else None
    return items, config, train, state


@keeps_torch_threads
def train_mil(ds: Dataset, images_dir: str | os.PathLike, cfg: MILConfig, *, out: str | os.PathLike,
              device: "str | torch.device" = "cpu", resume: bool = False, overwrite: bool = False,
              progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a :class:`WSDDN` on ``ds``'s bags; checkpoint to ``out`` after every epoch (see the
    module docstring). ``resume`` / ``overwrite`` as :func:`~wsis_cli.engine.train_classifier.
    train_classifier`. Returns ``{"out", "epochs", "iterations", "resumed_from", "bags", "history"}``."""
    say = log or (lambda _msg: None)
    out = Path(out)
    items, config, train, state = _prepare(ds, images_dir, cfg, out, resume, overwrite, say)
    n_bags = sum(len(it.anns) for it in items)
    start, history = (int(state["epoch"]), list(state["history"])) if state is not None else (0, [])
    if state is not None and start >= cfg.epochs:
        say(f"{out} already holds {start} epochs (asked for {cfg.epochs}): nothing to train")
        return {"out": str(out), "epochs": start, "iterations": 0, "resumed_from": start, "bags": n_bags,
                "history": history}
    dev = resolve_device(device) if isinstance(device, str) else device
    threads = set_threads(cfg.threads, dev)
    model, optimizer = _model_and_optimizer(ds, cfg, state, out, dev)
    del state
    data = BagImages(items, size=cfg.size, seed=cfg.seed)
    iters = math.ceil(len(items) / cfg.batch_size)
    total = cfg.epochs * iters
    say(f"training WSDDN on {cfg.backbone} (weights: {cfg.weights}) on {n_bags} bags in {len(items)} images, "
        f"{len(ds.categories)} classes, on {dev}: {iters} iterations per epoch")

    set_lr = cosine_lr(optimizer, total)

    def step(batch):
        images, rois, bag, classes = (t.to(dev, non_blocking=True) for t in batch)
        _, phi = model(images, rois, bag, len(classes))
        labels = torch.nn.functional.one_hot(classes, phi.shape[1]).float()
        right = int((phi.detach().argmax(dim=1) == classes).sum())
        return {"loss": mil_loss(phi, labels)}, len(classes), {"right": right}

    with interrupt_note(say, lambda: f"interrupted: {out} holds {len(history)} of {cfg.epochs} epochs; rerun "
                                     "with --resume to continue" if history else None):
        for epoch in range(start, cfg.epochs):
            torch.manual_seed(torch_seed(cfg.seed, epoch, stream=_TORCH))
            plan = batch_plan(len(items), cfg.batch_size, seed=cfg.seed, epoch=epoch)
            loader = make_loader(data, [[(i, epoch) for i in idx] for idx in plan], collate=collate_bags,
                                 workers=cfg.workers, device=dev)
            model.train()
            r = train_epoch(loader, step, optimizer, make_scaler(False), set_lr=set_lr, epoch=epoch,
                            first_iter=epoch * iters, total_iters=total, use_amp=False, device=dev,
                            hint="lower --lr", progress=progress)
            history.append({"epoch": epoch + 1, "loss": r.sums["loss"] / r.seen,
                            "accuracy": r.extras["right"] / max(r.seen, 1), "seconds": round(r.seconds, 3),
                            "images_per_s": round(len(items) / max(r.seconds, 1e-9), 3),
                            "load_share": round(r.load_share, 4), "threads": threads})
            save_epoch(out, kind=FORMAT, version=VERSION, config=config, train=train, model=model, optimizer=optimizer,
                       epoch=epoch + 1, history=history)
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['loss']:.4f}, bag accuracy "
                f"{history[-1]['accuracy']:.3f}, {r.seconds:.1f} s")
    return {"out": str(out), "epochs": cfg.epochs, "iterations": (cfg.epochs - start) * iters,
            "resumed_from": start or None, "bags": n_bags, "history": history}


def load_mil(path: str | os.PathLike, *, device: "str | torch.device" = "cpu") -> tuple[WSDDN, dict]:
    """The trained MIL model in eval mode on ``device`` and its ``config``; WsisError for a file
    that is not a ``wsis-mil`` checkpoint."""
    return load_model(path, kind=FORMAT, version=VERSION, device=device,
                      build=lambda c: build_mil(backbone=c["backbone"], num_classes=c["num_classes"], weights="none",
                                                reduce=c["reduce"], hidden=c["hidden"], roi_size=c["roi_size"]))
