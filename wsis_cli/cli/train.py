"""`wsis train`: train models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar
from wsis_cli.cli.options import Device, ImagesDir, Seed

app = typer.Typer(help="Train models.", no_args_is_help=True)

BACKBONE_NAMES = ("resnet50", "resnet18")


@app.command("classifier")
@cli_errors
def classifier(
    labels: Annotated[str, typer.Argument(help="COCO dataset; its annotations (any level: il, ilc, box, full) give "
                                               "each image's classes. '-' = stdin.")],
    images: ImagesDir,
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                      help="Checkpoint file (.pt), rewritten after every epoch.")],
    backbone: Annotated[str, typer.Option("--backbone", help="resnet50 or resnet18.")] = "resnet50",
    weights: Annotated[str, typer.Option("--weights", help="Backbone init: imagenet (torchvision's; downloaded once "
                                                           "to the torch hub cache), none (random) or a local .pth "
                                                           "file. Offline, use none or a path.")] = "imagenet",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs (passes over the images).")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate of the head (a pretrained backbone gets 0.1x); "
                                                   "SGD, cosine decay.")] = 0.01,
    size: Annotated[int, typer.Option("--size", min=32, help="Training side in px; images are resized to a square, "
                                                             "batches use 0.75, 1 or 1.25 times it.")] = 448,
    device: Device = "auto",
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision (float16 autocast) on CUDA; ignored on CPU.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Data-loading worker processes (0: load in the "
                                                                  "main process).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint at --out if it exists "
                                                          "(same options; --epochs may grow).")] = False,
    seed: Seed = 0,
) -> None:
    """Train a peak-stimulated classifier (PRM) on image-level labels; PRM pseudo-labels use it.

    A ResNet (output stride 16) with a 1x1 conv class-response head; its class scores average
    each response map over its local maxima (3x3 peaks above the map's median); multilabel
    soft-margin loss, flip / colour / scale augmentation. Writes nothing to stdout.
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.engine.device import resolve_device
    from wsis_cli.errors import WsisError

    if backbone not in BACKBONE_NAMES:
        raise typer.BadParameter(f"must be one of {', '.join(BACKBONE_NAMES)}", param_hint="--backbone")
    if not lr > 0:
        raise typer.BadParameter("must be a positive number", param_hint="--lr")
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give a checkpoint file", param_hint="--out")
    try:
        dev = resolve_device(device)
    except WsisError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from None
    from wsis_cli.engine.classifier import ClassifierConfig, train_classifier
    from wsis_cli.models.backbones import resolve_weights

    resolve_weights(weights)  # a missing --weights file fails before any work
    ds = load_dataset(labels)
    cfg = ClassifierConfig(backbone=backbone, weights=weights, size=size, epochs=epochs, batch_size=batch_size,
                           lr=lr, amp=amp, seed=seed, workers=workers)
    with progress_bar("training", unit="it") as progress:
        summary = train_classifier(ds, images, cfg, out=out, device=dev, resume=resume, progress=progress, log=info)
    if summary["iterations"]:
        h = summary["history"]
        info(f"wrote {out}: {summary['epochs']} epochs, loss {h[0]['loss']:.4f} (epoch 1) -> {h[-1]['loss']:.4f}, "
             f"accuracy {h[-1]['accuracy']:.3f}")
