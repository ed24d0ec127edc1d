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
    overlap: Annotated[str, typer.Option("--overlap", help="Who gets pixels two masks claim: none (masks stay overlapping), smaller, larger, lower-edge (the box reaching lower is in front) or evidence (the instance whose colour model explains the pixel better).")] = "none",
    margin: Annotated[float, typer.Option("--margin", min=0.0, help="Crop margin around each box, as a fraction of its side.")] = 0.2,
    max_side: Annotated[int, typer.Option("--max-side", min=0, help="Downscale crops of more than this squared pixels before GrabCut; 0 = never.")] = 160,
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
    are resolved by --overlap.
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.jobs import default_workers, run_job
    from wsis_cli.pseudo.fallback import FALLBACKS
    from wsis_cli.pseudo.grabcut import GrabCutConfig
    from wsis_cli.pseudo.grabcut_dataset import grabcut_job, summary_line
    from wsis_cli.pseudo.overlap import OVERLAPS

    choice(fallback, FALLBACKS, "--fallback")
    choice(overlap, OVERLAPS, "--overlap")
    _resume_log_path(out, resume)  # a wrong --out or --resume fails before the dataset loads
    cfg = options_config(GrabCutConfig, iters=iters, valid_iou=valid_iou, fallback=fallback, overlap=overlap,
                         margin=margin, max_side=max_side, cleanup=cleanup, retry_iou=RETRY_IOU if retry else 0.0,
                         seed=seed)
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
    mask_thr: Annotated[float, typer.Option("--mask-thr", min=0.0, max=1.0, help="The map's part of a mask: score > this inside the refined box.")] = 0.5,
    mask_rule: Annotated[str, typer.Option("--mask-rule", help="union (the map's part joined with the box's own mask where the map does not contradict it), map (the map alone, the paper's crop) or incoming (the own mask, clipped to the refined box).")] = "union",
    contradict: Annotated[float, typer.Option("--contradict", min=0.0, max=1.0, help="union: an own-mask pixel the map scores below this is dropped.")] = 0.1,
    keep_region: Annotated[float, typer.Option("--keep-region", min=0.0, max=1.0, help="A refined box must hold this share of the box's own mask, or the input box is kept.")] = 0.5,
    max_grow: Annotated[float, typer.Option("--max-grow", min=1.0, help="... and an area within this factor of the input box's, either way.")] = 100.0,
    centres: Annotated[bool, typer.Option("--centres/--no-centres", help="A box without a point takes its centre as its point (it stops at its neighbours').")] = True,
    empty: Annotated[str, typer.Option("--empty", help="An instance whose mask comes out empty (the map contradicts it): drop it (counted, one warning) or fall back to its own mask (incoming).")] = "drop",
    dedup: Annotated[float, typer.Option("--dedup", min=0.0, max=1.0, help="Two masks of a class in an image overlapping by IoU above this are one object: the lower-scored is dropped (1: keep both).")] = 0.5,
    image_labels: Annotated[str | None, typer.Option("--labels", help="The image-level labels of the images (IL+C, or IL): where they count more instances of a class than the boxes hold, the largest parts of the class map that no instance covers are added, scored by their mean map score.")] = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Center-context-gap refinement: move every box onto its object in the class score map.

    All boxes are optimised together by gradient descent on their four coordinates. A box keeps
    its own "point" and never takes in another instance's stop point of its class. A move that
    leaves the box's own mask behind or grows or shrinks it beyond --max-grow is undone. The mask
    follows --mask-rule; an instance whose mask comes out empty is dropped (one warning with the
    count) or, with --empty incoming, keeps its own mask. Duplicates (--dedup) are dropped; with
    --labels, instances the counts say are missing are taken from the map. Writes bbox (the mask's
    box), the mask, and "wsis": {"box_before", "ccgr_box"} per annotation ("kept_box" /
    "fallback" where a guard acted; "added" on an instance taken from the map).
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.pseudo.ccgr import CCGRConfig
    from wsis_cli.pseudo.ccgr_dataset import pseudolabel_ccgr, summary_line

    cfg = options_config(CCGRConfig, steps=steps, context=context, lr=lr, objective=objective, threshold=threshold,
                         stop=stop, mask_thr=mask_thr, mask_rule=mask_rule, contradict=contradict,
                         keep_region=keep_region, max_grow=max_grow, centres=centres, empty=empty, dedup=dedup)
    ds = load_dataset(boxes)
    labels = load_dataset(image_labels) if image_labels is not None else None
    with progress_bar("ccgr", unit="box") as progress:
        result = pseudolabel_ccgr(ds, maps_dir=maps, cfg=cfg, seed=seed, labels=labels, progress=progress, warn=warn)
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


@app.command("bags")
@cli_errors
def bags(
    seeds: Annotated[str, typer.Argument(metavar="SEEDS.json", help="COCO dataset of seeds: peaks from `pseudolabel "
                                                                    "prm` (\"point\" and region bbox) or boxes; "
                                                                    "'-' = stdin.")],
    images: ImagesDir,
    maps: Annotated[Path, typer.Option("--maps", exists=True, file_okay=False,
                                       help="Folder of class score maps <image stem>.npz (O of Eq. 4).")],
    out: Out = "-",
    top: Annotated[int, typer.Option("--top", min=1, help="Proposals per bag (the best by Eq. 4).")] = 10,
    max_side: Annotated[int, typer.Option("--max-side", min=16, help="Selective search and superpixels run on the "
                                                                     "image shrunk to this longer side (px).")] = 200,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """MIL bags: each seed's top proposals by the CCGR paper's Eq. 4.

    Proposals are selective-search boxes and boxes grown from the seed box; a peak's are those
    holding its point (and no other point of its class); a seed without a point takes the
    boxes overlapping it most. Ranked by objectness (superpixel straddling, standing in for
    MCG's) minus 0.1 x the box's background share in the class score map. Writes the dataset
    with "wsis": {"bag": its x, y, w, h boxes, "bag_rank": their Eq. 4 values} (best first) per
    annotation.
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.pseudo.bags import make_bags, summary_line
    from wsis_cli.pseudo.proposals import ProposalConfig

    cfg = options_config(ProposalConfig, top=top, max_side=max_side)
    ds = load_dataset(seeds)
    with progress_bar("bags") as progress:
        result, summary = make_bags(ds, images_dir=images, maps_dir=maps, cfg=cfg, seed=seed, progress=progress,
                                    warn=warn)
    write_output(out, result.to_json())
    info(summary_line(summary))


@app.command("mil")
@cli_errors
def mil(
    bags_json: Annotated[str, typer.Argument(metavar="BAGS.json", help="Dataset from `pseudolabel bags`; "
                                                                       "'-' = stdin.")],
    images: ImagesDir,
    model: Annotated[Path, typer.Option("--model", exists=True, dir_okay=False, help="Checkpoint from `wsis train "
                                                                                     "mil`.")],
    out: Out = "-",
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """One box per bag: the proposal the MIL branch scores highest for the bag's class.

    Every annotation keeps its fields (mask, "point") and gets bbox = the chosen proposal and
    "wsis": {"method": "mil", "box_before", "mil_score"}; `pseudolabel ccgr` refines these boxes.
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.pseudo.mil import pseudolabel_mil, summary_line

    ds = load_dataset(bags_json)
    with progress_bar("pseudolabel mil") as progress:
        result, summary = pseudolabel_mil(ds, images_dir=images, model=model, device=device, progress=progress)
    write_output(out, result.to_json())
    info(summary_line(summary))
