"""`wsis pseudolabel`: masks from weak labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar, warn, write_output
from wsis_cli.cli.options import Device, ImagesDir, Out, Resume, Seed, Shard, Workers

app = typer.Typer(help="Make instance masks (pseudo-labels) from weak labels.", no_args_is_help=True)

RETRY_IOU = 0.7  # the bar a core-seeded second GrabCut must clear (measured: benchmarks/RESULTS.md)


@app.command("grabcut")
@cli_errors
def grabcut(
    boxes: Annotated[str, typer.Argument(help="COCO dataset with box labels (any segmentation is ignored); '-' = stdin.")],
    images: ImagesDir,
    out: Out = "-",
    iters: Annotated[int, typer.Option("--iters", min=1, help="GrabCut iterations.")] = 5,
    valid_iou: Annotated[float, typer.Option("--valid-iou", min=0.0, max=1.0, help="A mask is valid when IoU(its bbox, the box) >= this.")] = 0.5,
    fallback: Annotated[str, typer.Option("--fallback", help="What replaces an invalid mask: ellipse, box or none.")] = "ellipse",
    margin: Annotated[float, typer.Option("--margin", min=0.0, help="Crop margin around each box, as a fraction of its side.")] = 0.2,
    max_side: Annotated[int, typer.Option("--max-side", min=0, help="Downscale crops longer than this (px) before GrabCut; 0 = never.")] = 160,
    cleanup: Annotated[bool, typer.Option("--cleanup/--no-cleanup", help="Morphological clean-up, keep the component that fills the box, fill holes.")] = True,
    retry: Annotated[bool, typer.Option("--retry/--no-retry", help="Give an invalid mask a second GrabCut seeded with a sure-foreground core; keep it if its bbox IoU >= 0.7.")] = True,
    workers: Workers = None,
    resume: Resume = False,
    shard: Shard = None,
    seed: Seed = 0,
) -> None:
    """GrabCut in every box; invalid masks (bbox IoU < --valid-iou) become the fallback ellipse.

    Writes the dataset with a compressed-RLE mask, its area and
    "wsis": {"method", "valid", "box_iou"} on every annotation. Pixels claimed by two instances
    go to the smaller one.
    """
    from wsis_cli.coco import display_name, load_dataset, provenance
    from wsis_cli.errors import WsisError
    from wsis_cli.jobs import ResumeLog, default_workers, fingerprint, parse_shard, shard_images
    from wsis_cli.pseudo.box_masks import pseudolabel_boxes
    from wsis_cli.pseudo.fallback import FALLBACKS
    from wsis_cli.pseudo.grabcut import GrabCutConfig

    if fallback not in FALLBACKS:
        raise typer.BadParameter(f"must be one of {', '.join(FALLBACKS)}", param_hint="--fallback")
    part = parse_shard(shard)
    log_path = resume_log_path(out)
    if resume and log_path is None:
        raise typer.BadParameter("--resume keeps its progress next to the output: give --out FILE (a regular file)",
                                 param_hint="--resume")
    if log_path is not None and log_path.exists() and not resume:
        raise WsisError(f"{log_path} holds an interrupted run: add --resume to continue it, or delete it to start afresh")
    cfg = GrabCutConfig(iters=iters, valid_iou=valid_iou, fallback=fallback, margin=margin, max_side=max_side,
                        cleanup=cleanup, retry_iou=RETRY_IOU if retry else 0.0, seed=seed)
    ds = load_dataset(boxes)
    todo = shard_images(ds.images, part)
    options = {"boxes": display_name(boxes), "images": str(images), "shard": shard, **cfg.to_dict()}
    log = None
    if log_path is not None:
        run_id = fingerprint("pseudolabel grabcut", {k: v for k, v in options.items() if k != "boxes"},
                             [todo, [a for im in todo for a in ds.anns_by_image[im["id"]]]])
        log = ResumeLog(log_path, run_id, resume=resume)
        if resume and log.done:
            info(f"resuming: {len(log.done)} of {len(todo)} images already done")
    try:
        with progress_bar("grabcut") as progress:
            result, summary = pseudolabel_boxes(ds, todo, images, cfg, workers=workers or default_workers(), log=log,
                                                progress=progress, warn=warn)
        prov = provenance("pseudolabel grabcut", options, seed)
        prov["summary"] = summary.to_dict()
        write_output(out, result.to_json(prov))
    except BaseException as e:
        if not log:
            raise
        log.close(remove=False)  # keep the finished images for --resume
        if not log.done:
            log.path.unlink(missing_ok=True)
            raise
        note = f"{len(log.done)} finished images are kept in {log.path}: rerun with --resume to continue"
        if isinstance(e, WsisError):  # still one line: the fault, then where the work is kept
            raise WsisError(f"{e} ({note})") from None
        info(note)
        raise
    if log:
        log.close(remove=True)
    _print_summary(summary)


def resume_log_path(out: str) -> Path | None:
    """Where a run writing ``out`` logs its finished images: ``OUT.resume.jsonl`` for a regular
    output file; None for stdout and special files (/dev/null, pipes). A folder is a usage error."""
    if out == "-":
        return None
    p = Path(out)
    if p.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give an output file", param_hint="--out")
    if p.exists() and not p.is_file():
        return None
    return Path(f"{out}.resume.jsonl")


def _print_summary(s) -> None:
    parts = [f"{s.masks} masks"]
    for size, label in (("small", "small boxes (< 64x64 px)"), ("large", "large boxes")):
        b = s.by_size[size]
        if b["boxes"]:
            parts.append(f"{label}: {b['invalid']}/{b['boxes']} invalid ({100 * b['invalid'] / b['boxes']:.0f}%)")
    parts.append("methods: " + ", ".join(f"{k} {v}" for k, v in sorted(s.methods.items())))
    if s.skipped:
        parts.append(f"{s.skipped} boxes skipped (no area)")
    if s.empty:
        parts.append(f"{s.empty} masks empty")
    info("; ".join(parts))


@app.command("prm")
@cli_errors
def prm(
    labels: Annotated[str, typer.Argument(help="COCO dataset with image-level labels (IL or IL+C; masks and boxes count as labels); '-' = stdin.")],
    images: ImagesDir,
    model: Annotated[Path, typer.Option("--model", exists=True, dir_okay=False, help="Classifier from `wsis train classifier`.")],
    out: Out = "-",
    save_maps: Annotated[Path | None, typer.Option("--save-maps", file_okay=False, help="Write each image's class score maps here (<stem>.npz) for `pseudolabel ccgr`.")] = None,
    peak_kernel: Annotated[int, typer.Option("--peak-kernel", min=1, help="Peak window side (odd).")] = 3,
    peak_rel: Annotated[float, typer.Option("--peak-rel", min=0.0, max=1.0, help="IL labels (no count): keep peaks >= this x the class's strongest.")] = 0.5,
    prm_thr: Annotated[float, typer.Option("--prm-thr", min=0.0, max=1.0, help="Instance region: PRM >= this x its maximum.")] = 0.15,
    refine: Annotated[str, typer.Option("--refine", help="grabcut (the region seeds GrabCut) or none (the region is the mask).")] = "grabcut",
    device: Device = "auto",
    shard: Shard = None,
    seed: Seed = 0,
) -> None:
    """One instance per class peak: peak response maps -> masks (Zhou et al. 2018).

    With a count per class (IL+C) the COUNT strongest peaks are kept; without (IL), peaks at
    least --peak-rel times the strongest. Writes a COCO dataset with bbox, RLE mask, score and
    the peak as "point" [x, y] per instance (the input `pseudolabel ccgr` uses).
    """
    from wsis_cli.coco import display_name, load_dataset, provenance
    from wsis_cli.engine.classifier import load_classifier
    from wsis_cli.engine.device import resolve_device
    from wsis_cli.jobs import parse_shard, shard_images
    from wsis_cli.pseudo.prm import PRMConfig, pseudolabel_prm

    part = parse_shard(shard)
    dev = resolve_device(device)  # checked by the --device option
    cfg = PRMConfig(peak_kernel=peak_kernel, peak_rel=peak_rel, prm_thr=prm_thr, refine=refine, seed=seed)
    ds = load_dataset(labels)
    net, config = load_classifier(model, device=dev)
    todo = shard_images(ds.images, part)
    import torch

    torch.manual_seed(seed)
    with progress_bar("prm") as progress:
        anns, summary = pseudolabel_prm(ds, todo, images, net, config, cfg, device=dev, save_maps=save_maps,
                                        progress=progress, warn=warn)
    from dataclasses import replace

    result = replace(ds, images=todo, annotations=anns)
    options = {"labels": display_name(labels), "images": str(images), "model": str(model),
               "save_maps": str(save_maps) if save_maps else None, "shard": shard, **cfg.to_dict()}
    prov = provenance("pseudolabel prm", options, seed)
    prov["summary"] = summary
    write_output(out, result.to_json(prov))
    parts = [f"{summary['instances']} instances in {summary['images']} images"]
    if summary["short_of_count"]:
        parts.append(f"{summary['short_of_count']} counted instances had no peak")
    if summary["empty_masks"]:
        parts.append(f"{summary['empty_masks']} peaks dropped (empty mask)")
    info("; ".join(parts))


@app.command("ccgr")
@cli_errors
def ccgr(
    boxes: Annotated[str, typer.Argument(help="COCO dataset with boxes (e.g. from `pseudolabel prm`); '-' = stdin.")],
    maps: Annotated[Path, typer.Option("--maps", exists=True, file_okay=False, help="Folder of class score maps <image stem>.npz (see README).")],
    out: Out = "-",
    steps: Annotated[int, typer.Option("--steps", min=0, help="Gradient steps.")] = 200,
    context: Annotated[float, typer.Option("--context", min=1.0, help="Context box = the box scaled by this about its centre (gap objective).")] = 1.5,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Adam step, as a fraction of the box's starting side.")] = 0.02,
    objective: Annotated[str, typer.Option("--objective", help="mass (default: class mass minus --threshold per pixel) or gap (the paper's center-context gap).")] = "mass",
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="t of the mass objective: a side moves out while the mean score along it is above t.")] = 0.1,
    stop: Annotated[str, typer.Option("--stop", help="split (stop between two points of a class, by box size) or point (the paper: stop at the other point).")] = "split",
    mask_thr: Annotated[float, typer.Option("--mask-thr", min=0.0, max=1.0, help="Mask = score map > this inside the refined box.")] = 0.5,
    seed: Seed = 0,
) -> None:
    """Center-context-gap refinement: move every box onto its object in the class score map.

    All boxes are optimised together by gradient descent on their four coordinates. A box keeps
    its own "point" and never takes in another instance's stop point of its class. Writes the
    refined bbox, a mask cropped from the class map, and "wsis": {"box_before"} per annotation.
    """
    from wsis_cli.coco import display_name, load_dataset, provenance
    from wsis_cli.pseudo.ccgr import CCGRConfig, ccgr_dataset

    cfg = CCGRConfig(steps=steps, context=context, lr=lr, objective=objective, threshold=threshold, stop=stop,
                     mask_thr=mask_thr)
    ds = load_dataset(boxes)
    import torch

    torch.manual_seed(seed)
    with progress_bar("ccgr", unit="box") as progress:
        anns, summary = ccgr_dataset(ds, maps, cfg, progress=progress)
    from dataclasses import replace

    result = replace(ds, annotations=anns)
    options = {"boxes": display_name(boxes), "maps": str(maps), **cfg.to_dict()}
    prov = provenance("pseudolabel ccgr", options, seed)
    prov["summary"] = summary
    write_output(out, result.to_json(prov))
    msg = f"{summary['boxes']} boxes refined ({summary['with_point']} with a point)"
    if summary["mean_box_iou_moved"] is not None:
        msg += f"; mean IoU of each box with its start {summary['mean_box_iou_moved']:.2f}"
    if summary["empty_masks"]:
        msg += f"; {summary['empty_masks']} masks empty (no score above --mask-thr in the box)"
    info(msg)


@app.command("net")
@cli_errors
def net(
    weak: Annotated[str, typer.Argument(metavar="WEAK.json", help="COCO dataset of weak labels (IL+C, IL, boxes; "
                                                                  "masks are kept); '-' = stdin.")],
    images: ImagesDir,
    model: Annotated[Path, typer.Option("--model", exists=True, help="Annotation network: a run of `wsis train "
                                                                     "maskrcnn` (its best.pt) or a checkpoint.")],
    out: Out = "-",
    rank: Annotated[str, typer.Option("--rank", help="IL+C labels: keep each class's k best detections by score or "
                                                     "by predicted iou (needs the IoU head).")] = "score",
    score_thr: Annotated[float, typer.Option("--score-thr", min=0.0, max=1.0,
                                             help="IL labels (no count): keep detections scoring at least this.")
                         ] = 0.05,
    device: Device = "auto",
) -> None:
    """Pseudo-label a weak pool with a trained model (BASIS annotation network).

    For each image: IL+C labels keep the k best detections of each labelled class (count k);
    IL labels keep those scoring at least --score-thr; a box label gets the mask the model
    predicts inside it; full masks stay. Detections of unlabelled classes are dropped. Writes a
    training-ready COCO dataset whose instances carry `score` and, with the IoU head, `iou`.
    """
    from wsis_cli.coco import display_name, load_dataset
    from wsis_cli.inference import net_pseudolabels

    if rank not in ("score", "iou"):
        raise typer.BadParameter("must be score or iou", param_hint="--rank")
    dev = device  # checked by the --device option
    ds = load_dataset(weak)
    with progress_bar("pseudolabel net") as progress:
        result, summary = net_pseudolabels(ds, images, model, device=dev, rank=rank, score_thr=score_thr,
                                           options={"weak": display_name(weak), "images": str(images),
                                                    "model": str(model)}, progress=progress)
    write_output(out, result.to_json())
    by = ", ".join(f"{k} {v}" for k, v in summary.get("by_source", {}).items() if v)
    line = f"{summary.get('instances', len(result.annotations))} instances in {len(result.images)} images ({by})"
    if summary.get("images_short"):
        line += f"; {summary['images_short']} images with fewer detections than their counts"
    if summary.get("unlabelled_images"):
        line += (f"; {summary['unlabelled_images']} labelled images left out (nothing found in them, and training "
                 "would take them for background)")
    info(line)
