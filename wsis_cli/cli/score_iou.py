"""`wsis score-iou`: per-instance and per-image mask IoU scores, real (oracle) or predicted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar, warn, write_output
from wsis_cli.cli.options import Device, Out, Quiet


@cli_errors
def score_iou(
    pred: Annotated[str | None, typer.Argument(metavar="PRED", help="COCO results list or dataset (pseudo-labels) whose masks to score against --gt; '-' = stdin.")] = None,
    gt: Annotated[str | None, typer.Option("--gt", help="Ground-truth COCO dataset with masks (needed with PRED).")] = None,
    out: Out = "-",
    compare: Annotated[str | None, typer.Option("--compare", help="A scores file to compare: predicted scores against this oracle (with PRED), or the oracle for this --model's scores.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the --compare summary as JSON on stdout instead of a table (needs --out FILE).")] = False,
    model: Annotated[Path | None, typer.Option("--model", exists=True, help="Trained run folder: predict the scores with its IoU head instead of PRED.")] = None,
    images: Annotated[Path | None, typer.Option("--images", exists=True, file_okay=False, help="Image folder (with --model).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="COCO dataset of the images to score, e.g. the weak pool (with --model).")] = None,
    score_thr: Annotated[float, typer.Option("--score-thr", min=0.0, max=1.0, help="Keep detections scoring at least this (with --model).")] = 0.05,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass (with --model; as predict's, so the instances match).")] = 1,
    rank: Annotated[str, typer.Option("--rank", help="With IL+C labels in --dataset: keep each class's k best "
                                                     "detections by score or by iou (as pseudolabel net).")] = "score",
    quiet: Quiet = False,
) -> None:
    """Mask IoU per instance and per image (the mean over its instances), as `wsis select` reads.

    Oracle: `wsis score-iou PRED --gt GT.json` gives each predicted mask its real IoU with the
    ground truth, matched one-to-one per image and class (maximum total IoU; unmatched: 0;
    crowd regions ignored). Predicted: `wsis score-iou --model RUN --images DIR` gives the
    model's own estimate. --compare FILE prints the mean absolute error between predicted and
    oracle scores, per image (and per instance), beside always predicting the mean.
    """
    from wsis_cli.coco import display_name, provenance, read_json
    from wsis_cli.iou_scores import compare_scores, parse_iou_scores

    if (pred is None) == (model is None):
        raise typer.BadParameter("give either PRED (real IoU against --gt) or --model (predicted IoU), not both"
                                 if pred is not None else "give PRED (real IoU against --gt) or --model (predicted IoU)",
                                 param_hint="PRED / --model")
    if pred is not None and gt is None:
        raise typer.BadParameter("PRED is scored against ground truth: give --gt GT.json", param_hint="--gt")
    if pred is not None and (images is not None or dataset is not None):
        raise typer.BadParameter("--images and --dataset go with --model, not PRED", param_hint="--images / --dataset")
    if model is not None and images is None:
        raise typer.BadParameter("--model predicts on images: give --images DIR", param_hint="--images")
    if model is not None and gt is not None:
        raise typer.BadParameter("--gt goes with PRED; to compare --model's scores with real ones, pass an oracle "
                                 "scores file to --compare", param_hint="--gt")
    if rank not in ("score", "iou"):
        raise typer.BadParameter("must be score or iou", param_hint="--rank")
    if as_json and compare is None:
        raise typer.BadParameter("--json prints the --compare summary: give --compare FILE", param_hint="--json")
    if as_json and out == "-":
        raise typer.BadParameter("--json prints the comparison on stdout: write the scores to --out FILE",
                                 param_hint="--out")
    stdin_users = [name for name, v in (("PRED", pred), ("--gt", gt), ("--compare", compare), ("--dataset", dataset))
                   if v is not None and display_name(v) == "<stdin>"]
    if len(stdin_users) > 1:
        raise typer.BadParameter(f"only one input can be stdin ('-'), got {' and '.join(stdin_users)}",
                                 param_hint=stdin_users[0])

    other = parse_iou_scores(read_json(compare), path=display_name(compare)) if compare is not None else None
    options = {"pred": pred, "gt": gt, "model": model, "images": images, "dataset": dataset, "compare": compare}
    if model is not None:
        from wsis_cli.coco import load_dataset
        from wsis_cli.engine.predictor import Predictor
        from wsis_cli.pseudo.net import predicted_scores

        options.update(score_thr=score_thr, batch_size=batch_size, device=device, rank=rank)
        ds = load_dataset(dataset) if dataset else None
        predictor = Predictor.from_run(model, device)
        with progress_bar("scoring") as progress:
            rec = predicted_scores(predictor, images, dataset=ds, score_thr=score_thr, batch_size=batch_size,
                                   rank=rank, name=str(model), progress=progress)
        rec = {"info": {"wsis": provenance("score-iou", options, None)},
               **{k: v for k, v in rec.items() if k != "info"}}
    else:
        from wsis_cli.coco import load_dataset, load_predictions
        from wsis_cli.iou_scores import oracle_scores

        gt_ds = load_dataset(gt)
        preds = load_predictions(pred)
        with progress_bar("scoring") as progress:
            scored = oracle_scores(gt_ds, preds, path=display_name(pred), progress=progress)
        rec = {"info": {"wsis": provenance("score-iou", options, None)}, **scored}
    this = parse_iou_scores(rec, path=out if out != "-" else "<stdout>")
    summary = None
    if other is not None:  # compared before anything is written: a failed comparison leaves no file
        predicted, oracle = (other, this) if model is None else (this, other)
        summary = compare_scores(predicted, oracle)
    write_output(out, rec)
    summarise(this)
    if summary is None:
        return
    if summary["n_instances"] == 0 and predicted.instances and oracle.instances:
        warn("no instance is named in both files (annotation ids or indices differ): no instance-level MAE")
    if as_json:
        write_output("-", {"predicted": predicted.path, "oracle": oracle.path, **summary}, indent=2)
    else:
        print_comparison(summary, predicted=predicted.path, oracle=oracle.path)


def summarise(scores) -> None:
    import numpy as np

    s = scores.images.scores
    n_scored = int((~np.isnan(s)).sum())
    line = f"scored {len(scores.instances)} instances in {n_scored} of {s.size} images"
    if n_scored:
        line += f"; image scores: mean {np.nanmean(s):.3f}, range {np.nanmin(s):.3f}..{np.nanmax(s):.3f}"
    info(line)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def print_comparison(summary: dict, *, predicted: str, oracle: str) -> None:
    from rich.table import Table

    from wsis_cli.cli.io import err_console as console

    t = Table(title=f"IoU score error: {predicted} vs oracle {oracle}", title_justify="left",
              caption="MAE of |predicted − real IoU|; baseline: always predict the mean real image score",
              caption_justify="left")
    for c in ("level", "compared", "MAE", "mean baseline"):
        t.add_column(c, justify="left" if c == "level" else "right")
    t.add_row("image", str(summary["n_images"]), _fmt(summary["mae_image"]), _fmt(summary["mae_mean_baseline"]))
    t.add_row("instance", str(summary["n_instances"]), _fmt(summary["mae_instance"]), "")
    console.print(t)
