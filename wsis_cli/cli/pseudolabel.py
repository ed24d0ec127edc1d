"""`wsis pseudolabel`: masks from weak labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar, warn, write_output
from wsis_cli.cli.options import (Device, ImagesDir, Out, Quiet, Resume, Seed, Shard, Workers, choice,
                                  options_config)

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
    quiet: Quiet = False,
) -> None:
    """GrabCut in every box; invalid masks (bbox IoU < --valid-iou) become the fallback ellipse.

    Writes the dataset with a compressed-RLE mask, its area and
    "wsis": {"method", "valid", "box_iou"} on every annotation. Pixels claimed by two instances
    go to the smaller one.
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.jobs import default_workers, run_job
    from wsis_cli.pseudo.fallback import FALLBACKS
    from wsis_cli.pseudo.grabcut import GrabCutConfig
    from wsis_cli.pseudo.grabcut_dataset import grabcut_job, summary_line

    choice(fallback, FALLBACKS, "--fallback")
    _resume_log_path(out, resume)  # a wrong --out or --resume fails before the dataset loads
    cfg = options_config(GrabCutConfig, iters=iters, valid_iou=valid_iou, fallback=fallback, margin=margin,
                         max_side=max_side, cleanup=cleanup, retry_iou=RETRY_IOU if retry else 0.0, seed=seed)
    ds = load_dataset(boxes)
    with progress_bar("grabcut") as progress:
        job = grabcut_job(ds, images_dir=images, cfg=cfg, shard=shard, workers=workers or default_workers(),
                          progress=progress, warn=warn)
        labels = run_job(job, out=out, resume=resume, write=lambda result: write_output(out, result.to_json()),
                         note=info)
    info(summary_line(labels.summary))


def _resume_log_path(out: str, resume: bool):
    """:func:`wsis_cli.jobs.resume_log_path`, its option errors as usage errors."""
    from wsis_cli.jobs import OptionError, resume_log_path

    try:
        return resume_log_path(out, resume=resume)
    except OptionError as e:
        raise typer.BadParameter(str(e), param_hint=e.option) from None


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
    quiet: Quiet = False,
) -> None:
    """One instance per class peak: peak response maps -> masks (Zhou et al. 2018).

    With a count per class (IL+C) the COUNT strongest peaks are kept; without (IL), peaks at
    least --peak-rel times the strongest. Writes a COCO dataset with bbox, RLE mask, score and
    the peak as "point" [x, y] per instance (the input `pseudolabel ccgr` uses).
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.pseudo.prm import PRMConfig, pseudolabel_prm, summary_line

    cfg = options_config(PRMConfig, peak_kernel=peak_kernel, peak_rel=peak_rel, prm_thr=prm_thr, refine=refine, seed=seed)
    ds = load_dataset(labels)
    with progress_bar("prm") as progress:
        result = pseudolabel_prm(ds, images_dir=images, model=model, cfg=cfg, device=device, shard=shard,
                                 save_maps=save_maps, progress=progress, warn=warn)
    write_output(out, result.to_json())
    info(summary_line(result.summary))


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
    quiet: Quiet = False,
) -> None:
    """Center-context-gap refinement: move every box onto its object in the class score map.

    All boxes are optimised together by gradient descent on their four coordinates. A box keeps
    its own "point" and never takes in another instance's stop point of its class. Writes the
    refined bbox, a mask cropped from the class map, and "wsis": {"box_before"} per annotation.
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.pseudo.ccgr import CCGRConfig
    from wsis_cli.pseudo.ccgr_dataset import pseudolabel_ccgr, summary_line

    cfg = options_config(CCGRConfig, steps=steps, context=context, lr=lr, objective=objective, threshold=threshold,
                         stop=stop, mask_thr=mask_thr)
    ds = load_dataset(boxes)
    with progress_bar("ccgr", unit="box") as progress:
        result = pseudolabel_ccgr(ds, maps_dir=maps, cfg=cfg, seed=seed, progress=progress, warn=warn)
    write_output(out, result.to_json())
    info(summary_line(result.summary))


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
    min_iou: Annotated[float | None, typer.Option("--min-iou", min=0.0, max=1.0,
                                                  help="Mark detected instances whose predicted mask IoU is below "
                                                       "this wsis.valid false (needs the IoU head): `train maskrcnn "
                                                       "--only-valid` then ignores them.")] = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Pseudo-label a weak pool with a trained model (BASIS annotation network).

    For each image: IL+C labels keep the k best detections of each labelled class (count k);
    IL labels keep those scoring at least --score-thr; a box label gets the mask the model
    predicts inside it; full masks stay. Detections of unlabelled classes are dropped. Writes a
    training-ready COCO dataset whose instances carry `score` and, with the IoU head, `iou`.
    """
    from wsis_cli.coco import display_name, load_dataset
    from wsis_cli.engine.predictor import Predictor
    from wsis_cli.pseudo.net import RANKS, pseudolabel_with_model, summary_line

    choice(rank, RANKS, "--rank")
    ds = load_dataset(weak)
    predictor = Predictor.from_run(model, device)
    with progress_bar("pseudolabel net") as progress:
        labels = pseudolabel_with_model(ds, images, predictor, rank=rank, score_thr=score_thr, min_iou=min_iou,
                                        name=str(model),
                                        options={"weak": display_name(weak), "images": str(images),
                                                 "model": str(model)}, progress=progress)
    result = labels.to_dataset()
    write_output(out, result.to_json())
    info(summary_line(labels.summary, len(result.images)))
