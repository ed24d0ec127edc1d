"""`wsis train`: train models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar, warn
from wsis_cli.cli.options import Amp, Device, ImagesDir, LoaderWorkers, Overwrite, Quiet, ResumeRun, Seed, Threads
from wsis_cli.models import CLASSIFIER_BACKBONES, DETECTOR_BACKBONES, IOU_TARGETS

app = typer.Typer(help="Train models.", no_args_is_help=True)


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
    amp: Amp = False,
    workers: LoaderWorkers = 0,
    resume: ResumeRun = False,
    overwrite: Overwrite = False,
    threads: Threads = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Train a peak-stimulated classifier (PRM) on image-level labels; PRM pseudo-labels use it.

    A ResNet (output stride 16) with a 1x1 conv class-response head; its class scores average
    each response map over its local maxima (3x3 peaks above the map's median); multilabel
    soft-margin loss, flip / colour / scale augmentation. Writes nothing to stdout.
    """
    from wsis_cli.coco import load_dataset

    if backbone not in CLASSIFIER_BACKBONES:
        raise typer.BadParameter(f"must be one of {', '.join(CLASSIFIER_BACKBONES)}", param_hint="--backbone")
    if not lr > 0:
        raise typer.BadParameter("must be a positive number", param_hint="--lr")
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give a checkpoint file", param_hint="--out")
    dev = device  # checked by the --device option
    from wsis_cli.engine.train_classifier import ClassifierConfig, train_classifier
    from wsis_cli.models.backbones import resolve_weights

    resolve_weights(weights)  # a missing --weights file fails before any work
    ds = load_dataset(labels)
    cfg = ClassifierConfig(backbone=backbone, weights=weights, size=size, epochs=epochs, batch_size=batch_size,
                           lr=lr, amp=amp, seed=seed, workers=workers, threads=threads)
    with progress_bar("training", unit="it") as progress:
        summary = train_classifier(ds, images, cfg, out=out, device=dev, resume=resume, overwrite=overwrite,
                                   progress=progress, log=info)
    if summary["iterations"]:
        h = summary["history"]
        info(f"wrote {out}: {summary['epochs']} epochs, loss {h[0]['loss']:.4f} (epoch 1) -> {h[-1]['loss']:.4f}, "
             f"accuracy {h[-1]['accuracy']:.3f}")


@app.command("segmenter")
@cli_errors
def segmenter(
    labels: Annotated[str, typer.Argument(metavar="LABELS.json", help="COCO dataset whose masks (pseudo or not) give "
                                                                      "the class-level labels: the union of each "
                                                                      "class's masks; '-' = stdin.")],
    images: ImagesDir,
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                      help="Checkpoint file (.pt), rewritten after every epoch.")],
    image_labels: Annotated[str | None, typer.Option("--labels", help="The image-level labels (IL or IL+C) the "
                                                                      "pseudo-labels were made from: where they name "
                                                                      "a class, or more instances of one, than "
                                                                      "LABELS.json has masks of, the image's "
                                                                      "background is unknown (no loss off the "
                                                                      "masks); an image they label that LABELS.json "
                                                                      "left empty is not a negative.")] = None,
    backbone: Annotated[str, typer.Option("--backbone", help="resnet50 or resnet18.")] = "resnet50",
    weights: Annotated[str, typer.Option("--weights", help="Trunk init: imagenet (torchvision's; downloaded once to "
                                                           "the torch hub cache), none (random) or a local .pth file. "
                                                           "Offline, use none or a path.")] = "imagenet",
    size: Annotated[int, typer.Option("--size", min=32, help="Images are resized to a square of this side (px); "
                                                             "predict-maps uses it too.")] = 448,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the images.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate of the head (a pretrained trunk gets 0.1x); "
                                                   "cosine decay.")] = 1e-3,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    scale_jitter: Annotated[bool, typer.Option("--scale-jitter/--no-scale-jitter",
                                               help="Random 0.75-1.25x scale, cropped or padded to --size.")] = True,
    device: Device = "auto",
    amp: Amp = False,
    workers: LoaderWorkers = 0,
    resume: ResumeRun = False,
    overwrite: Overwrite = False,
    threads: Threads = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Train the semantic segmentation branch of CCGR on class-level (pseudo) labels.

    A ResNet trunk, PSPNet's pyramid pooling (bins 1, 2, 3, 6) and a stride-4 skip give background
    + one logit per category; pixel-wise cross-entropy, with no loss on overlaps of two classes,
    on box pixels outside the masks, on a thin band along each mask's border, on crowd and
    box-only boxes. Images with image-level labels only are left out. Writes nothing to stdout;
    `wsis predict-maps` turns the checkpoint into score maps for `pseudolabel ccgr --maps`.
    """
    from wsis_cli.coco import load_dataset

    if backbone not in CLASSIFIER_BACKBONES:
        raise typer.BadParameter(f"must be one of {', '.join(CLASSIFIER_BACKBONES)}", param_hint="--backbone")
    if not lr > 0:
        raise typer.BadParameter("must be a positive number", param_hint="--lr")
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give a checkpoint file", param_hint="--out")
    from wsis_cli.engine.train_segmenter import SegmenterConfig, train_segmenter
    from wsis_cli.models.backbones import resolve_weights

    resolve_weights(weights)  # a missing --weights file fails before any work
    ds = load_dataset(labels)
    if image_labels is not None:
        from wsis_cli.engine.segmenter_data import with_image_labels

        ds = with_image_labels(ds, load_dataset(image_labels))
    cfg = SegmenterConfig(backbone=backbone, weights=weights, size=size, epochs=epochs, batch_size=batch_size, lr=lr,
                          flip=flip, scale_jitter=scale_jitter, amp=amp, seed=seed, workers=workers, threads=threads)
    with progress_bar("training", unit="it") as progress:
        summary = train_segmenter(ds, images, cfg, out=out, device=device, resume=resume, overwrite=overwrite,
                                  progress=progress, log=info)
    if summary["iterations"]:
        h = summary["history"]
        info(f"wrote {out}: {summary['epochs']} epochs, loss {h[0]['loss']:.4f} (epoch 1) -> {h[-1]['loss']:.4f}, "
             f"training mIoU {h[-1]['miou']:.3f}")




@app.command("maskrcnn")
@cli_errors
def maskrcnn(
    train_json: Annotated[str, typer.Argument(metavar="TRAIN.json", help="COCO dataset: annotations with masks train "
                                                                         "everything, box-only ones the box branch "
                                                                         "(and the masks with --box-loss boxinst); "
                                                                         "'-' = stdin.")],
    images: ImagesDir,
    out: Annotated[Path | None, typer.Option("--out", "-o", file_okay=False,
                                             help="Run folder: config.json, metrics.jsonl, last.pt, best.pt, "
                                                  "epochs/.")] = None,
    backbone: Annotated[str, typer.Option("--backbone", help="resnet50, resnet18 or mobilenet_v3 (with FPN).")
                        ] = "resnet50",
    weights: Annotated[str, typer.Option("--weights", help="imagenet (the backbone's), coco (torchvision's COCO "
                                                           "detector; class layers random), none (random) or a local "
                                                           ".pth file; imagenet/coco are downloaded once to the torch "
                                                           "hub cache, so offline use none or a path.")] = "imagenet",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs of training the detector: segmentation "
                                                                "(boxes and masks), or detection (boxes) with "
                                                                "--boxes-only; --iou-epochs come after.")] = 12,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per step (per process).")] = 2,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate after warm-up (cosine decay).")] = 0.02,
    warmup_iters: Annotated[int, typer.Option("--warmup-iters", min=0, help="Linear warm-up iterations from lr/1000 "
                                                                            "(at most a quarter of the run).")] = 200,
    min_size: Annotated[int, typer.Option("--min-size", min=16, help="Shorter image side fed to the model.")] = 800,
    max_size: Annotated[int, typer.Option("--max-size", min=16, help="Longer side cap.")] = 1333,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    scale_jitter: Annotated[bool, typer.Option("--scale-jitter/--no-scale-jitter",
                                               help="Train at 0.8-1.2x --min-size.")] = True,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision on CUDA; ignored on CPU.")] = False,
    device: Device = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0, help="Data-loading worker processes.")] = 0,
    val: Annotated[str | None, typer.Option("--val", help="Validation COCO dataset with masks: mAP@0.5 after every "
                                                          "epoch picks best.pt.")] = None,
    val_images: Annotated[Path | None, typer.Option("--val-images", exists=True, file_okay=False,
                                                    help="Image folder of --val (default: --images).")] = None,
    only_valid: Annotated[bool, typer.Option("--only-valid", help="Train on the annotations whose wsis.valid is "
                                                                  "not false; the invalid ones become ignore regions "
                                                                  "(no loss near them, not background): the hybrid "
                                                                  "paper's large branch.")] = False,
    only_invalid: Annotated[bool, typer.Option("--only-invalid", help="Train on the annotations whose wsis.valid is "
                                                                      "false (and those without the flag: not GrabCut "
                                                                      "pseudo-labels); the valid ones become ignore "
                                                                      "regions. With --boxes-only: the hybrid paper's "
                                                                      "small branch.")] = False,
    boxes_only: Annotated[bool, typer.Option("--boxes-only", help="Train a Faster R-CNN detector on boxes (the "
                                                                  "hybrid paper's small branch).")] = False,
    iou_head: Annotated[bool, typer.Option("--iou-head", help="Add a mask-IoU branch, trained after segmentation "
                                                              "with everything else frozen.")] = False,
    iou_target: Annotated[str, typer.Option("--iou-target", help="What the IoU branch regresses: iou, sqrt or "
                                                                 "square of the IoU.")] = "sqrt",
    iou_epochs: Annotated[int, typer.Option("--iou-epochs", min=1, help="Epochs of IoU-branch training.")] = 3,
    iou_lr: Annotated[float, typer.Option("--iou-lr", help="Adam learning rate of the IoU branch.")] = 1e-3,
    fpn_channels: Annotated[int, typer.Option("--fpn-channels", min=8, help="FPN and mask-head width.")] = 256,
    box_loss: Annotated[str, typer.Option("--box-loss", help="What trains the mask head on box-only annotations: "
                                                             "none (they train the box branch only) or boxinst "
                                                             "(BoxInst's projection and colour-pairwise terms; a "
                                                             "dataset of boxes alone then trains a Mask R-CNN).")
                        ] = "none",
    neck: Annotated[str, typer.Option("--neck", help="fpn (torchvision's FPN) or efpn (the hybrid paper's "
                                                     "Enhanced-FPN: FPN plus a bottom-up path and a short path from "
                                                     "the lowest level; with --weights coco its FPN part is loaded, "
                                                     "its extra layers start random).")] = "fpn",
    head_channels: Annotated[int, typer.Option("--head-channels", min=8, help="Box-head MLP width.")] = 1024,
    keep_epochs: Annotated[int, typer.Option("--keep-epochs", min=-1, help="Per-epoch model files kept in "
                                                                           "RUN/epochs (-1: all, 0: none).")] = 3,
    resume: Annotated[Path | None, typer.Option("--resume", file_okay=False,
                                                help="Continue the run in this folder from its last.pt (same options; "
                                                     "--epochs may grow).")] = None,
    overwrite: Overwrite = False,
    threads: Threads = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Train a Mask R-CNN (or a Faster R-CNN with --boxes-only) on any mix of masks and boxes.

    Under `torchrun --nproc-per-node K -m wsis_cli train maskrcnn ...` it trains with
    DistributedDataParallel (gloo on CPU, NCCL on GPU); rank 0 writes the run folder.
    Writes nothing to stdout.
    """
    from wsis_cli.coco import load_dataset

    if backbone not in DETECTOR_BACKBONES:
        raise typer.BadParameter(f"must be one of {', '.join(DETECTOR_BACKBONES)}", param_hint="--backbone")
    if iou_target not in IOU_TARGETS:
        raise typer.BadParameter(f"must be one of {', '.join(IOU_TARGETS)}", param_hint="--iou-target")
    for name, value in (("--lr", lr), ("--iou-lr", iou_lr)):
        if not value > 0:
            raise typer.BadParameter("must be a positive number", param_hint=name)
    if boxes_only and iou_head:
        raise typer.BadParameter("the IoU branch reads the mask head; --boxes-only has none", param_hint="--iou-head")
    if out is None and resume is None:
        raise typer.BadParameter("give the run folder (--out RUN/, or --resume RUN/)", param_hint="--out")
    if out is not None and resume is not None and out.resolve() != resume.resolve():
        raise typer.BadParameter(f"--resume {resume} and --out {out} differ; give one", param_hint="--resume")
    run = resume if resume is not None else out
    if run.exists() and not run.is_dir():
        raise typer.BadParameter(f"{run} is a file; give a folder", param_hint="--out")
    if val is None and val_images is not None:
        raise typer.BadParameter("goes with --val", param_hint="--val-images")
    dev = device  # checked by the --device option
    if weights not in ("imagenet", "coco", "none") and not Path(weights).is_file():
        raise typer.BadParameter(f"{weights}: no such file (give imagenet, coco, none or a local .pth file)",
                                 param_hint="--weights")
    from wsis_cli.engine.train_detector import DetectorConfig, train_detector
    from wsis_cli.models.necks import NECKS

    if neck not in NECKS:
        raise typer.BadParameter(f"must be one of {', '.join(NECKS)}", param_hint="--neck")
    from wsis_cli.models.box_losses import BOX_LOSSES

    if box_loss not in BOX_LOSSES:
        raise typer.BadParameter(f"must be one of {', '.join(BOX_LOSSES)}", param_hint="--box-loss")
    if boxes_only and box_loss != "none":
        raise typer.BadParameter("it trains the mask head; --boxes-only has none", param_hint="--box-loss")
    ds = load_dataset(train_json)
    val_pair = (load_dataset(val), val_images or images) if val is not None else None
    cfg = DetectorConfig(backbone=backbone, weights=weights, epochs=epochs, batch_size=batch_size, lr=lr,
                         warmup_iters=warmup_iters, min_size=min_size, max_size=max_size, flip=flip,
                         scale_jitter=scale_jitter, amp=amp, seed=seed, workers=workers, only_valid=only_valid,
                         only_invalid=only_invalid, box_loss=box_loss,
                         boxes_only=boxes_only, iou_head=iou_head, iou_target=iou_target, iou_epochs=iou_epochs,
                         iou_lr=iou_lr, fpn_channels=fpn_channels, head_channels=head_channels, neck=neck,
                         keep_epochs=keep_epochs, threads=threads)
    with progress_bar("training", unit="it") as progress:
        summary = train_detector(ds, images, cfg, run=run, device=dev, resume=resume is not None, overwrite=overwrite,
                                 val=val_pair, progress=progress, log=info, warn=warn)
    if summary["iterations"] and summary["history"] and summary.get("rank", 0) == 0:
        h, best = summary["history"], summary["best"]
        extra = f", best val mAP@0.5 {best['map50']:.3f} (epoch {best['epoch']})" if best.get("map50") is not None else ""
        info(f"wrote {run}: {summary['epochs']} epochs, loss {h[0]['loss']:.4f} -> {h[-1]['loss']:.4f}{extra}")


@app.command("mil")
@cli_errors
def mil(
    bags: Annotated[str, typer.Argument(metavar="BAGS.json", help="Dataset from `wsis pseudolabel bags` (each "
                                                                  "annotation's wsis.bag); '-' = stdin.")],
    images: ImagesDir,
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                      help="Checkpoint file (.pt), rewritten after every epoch.")],
    backbone: Annotated[str, typer.Option("--backbone", help="resnet50 or resnet18.")] = "resnet50",
    weights: Annotated[str, typer.Option("--weights", help="Trunk init: imagenet (torchvision's; downloaded once), "
                                                           "none (random) or a local .pth file (a torchvision "
                                                           "ResNet, or a checkpoint whose keys sit under "
                                                           "'backbone.', e.g. `wsis train segmenter`'s).")
                       ] = "imagenet",
    size: Annotated[int, typer.Option("--size", min=32, help="Images are resized to a square of this side (px).")
                    ] = 448,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the images.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images (with all their bags) per step.")
                          ] = 2,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (cosine decay).")] = 1e-4,
    device: Device = "auto",
    resume: ResumeRun = False,
    overwrite: Overwrite = False,
    threads: Threads = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Train the MIL branch (WSDDN) on peak bags: it learns which proposal of a bag is the object.

    RoIAlign on a ResNet trunk, a classification stream (softmax over classes) and a detection
    stream (softmax over the bag's proposals); a bag's class scores sum their product over its
    proposals; binary cross-entropy against the bag's class. Writes nothing to stdout.
    """
    from wsis_cli.coco import load_dataset

    if backbone not in CLASSIFIER_BACKBONES:
        raise typer.BadParameter(f"must be one of {', '.join(CLASSIFIER_BACKBONES)}", param_hint="--backbone")
    if not lr > 0:
        raise typer.BadParameter("must be a positive number", param_hint="--lr")
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give a checkpoint file", param_hint="--out")
    from wsis_cli.engine.train_mil import MILConfig, train_mil
    from wsis_cli.models.backbones import resolve_weights

    resolve_weights(weights)  # a missing --weights file fails before any work
    ds = load_dataset(bags)
    cfg = MILConfig(backbone=backbone, weights=weights, size=size, epochs=epochs, batch_size=batch_size, lr=lr,
                    seed=seed, threads=threads)
    with progress_bar("training", unit="it") as progress:
        summary = train_mil(ds, images, cfg, out=out, device=device, resume=resume, overwrite=overwrite,
                            progress=progress, log=info)
    if summary["iterations"]:
        h = summary["history"]
        info(f"wrote {out}: {summary['epochs']} epochs on {summary['bags']} bags, loss {h[0]['loss']:.4f} (epoch 1) "
             f"-> {h[-1]['loss']:.4f}, bag accuracy {h[-1]['accuracy']:.3f}")
