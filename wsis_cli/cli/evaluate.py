"""`wsis evaluate`: mAP^r, COCO AP, AP_S/AP_L, ABO of predictions or pseudo-labels."""

from __future__ import annotations

from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, progress_bar, write_output
from wsis_cli.cli.options import JsonFlag, Quiet, parse_floats


@cli_errors
def evaluate(
    gt: Annotated[str, typer.Argument(help="Ground-truth COCO dataset with masks.")],
    pred: Annotated[str, typer.Argument(help="COCO results list, or a dataset of pseudo-labels (score 1.0 unless given); '-' = stdin.")],
    iou_thrs: Annotated[str, typer.Option("--iou-thrs", help="Comma-separated IoU thresholds for mAP^r.")] = "0.25,0.5,0.75",
    per_class: Annotated[bool, typer.Option("--per-class", help="Also report AP@0.5 per category.")] = False,
    as_json: JsonFlag = False,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Also write the JSON record to this file.")] = None,
    quiet: Quiet = False,
) -> None:
    """Score predicted masks (or boxes) against ground truth (a table on stderr; JSON with --json/--out).

    mAP^r at each threshold, COCO AP@[.5:.95], AP_S/AP_L split at 64×64 px, ABO (mean best
    mask IoU of each ground-truth instance) and, with --per-class, AP@0.5 per category.
    """
    thrs = parse_floats([iou_thrs], option="--iou-thrs", lo=0.0, hi=1.0, lo_open=True)
    from wsis_cli.coco import display_name, fill_areas, load_dataset, load_predictions, provenance
    from wsis_cli.metrics import evaluate as compute

    gt_ds = load_dataset(gt)
    fill_areas(gt_ds)
    preds = load_predictions(pred)
    with progress_bar("evaluating", unit="stage") as progress:
        rec = compute(gt_ds, preds, iou_thrs=thrs, per_class=per_class, pred_path=display_name(pred),
                      progress=progress)
    rec["info"] = {"wsis": provenance("evaluate", {"gt": gt, "pred": pred, "iou_thrs": thrs, "per_class": per_class})}
    if out:
        write_output(out, rec, indent=2)
    if as_json:
        write_output("-", rec, indent=2)
    else:
        print_report(rec)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def print_report(rec: dict) -> None:
    from rich.table import Table

    from wsis_cli.cli.io import err_console as console

    kind = "mask" if rec["iou_type"] == "segm" else "box"
    t = Table(title=f"{kind} evaluation", title_justify="left",
              caption=f"{rec['counts']['predictions']} predictions, {rec['counts']['gt_instances']} instances, "
                      f"{rec['counts']['images']} images", caption_justify="left")
    cols = [f"mAP@{k}" for k in rec["mAP"]] + ["AP", "AP_S", "AP_L"] + (["ABO"] if kind == "mask" else [])
    for c in cols:
        t.add_column(c, justify="right")
    vals = [*rec["mAP"].values(), rec["AP"], rec["AP_S"], rec["AP_L"]] + ([rec["ABO"]] if kind == "mask" else [])
    t.add_row(*(_fmt(v) for v in vals))
    console.print(t)
    if rec["per_class"]:
        pc = Table(title="per class", title_justify="left")
        for c in ("id", "name", "instances", "AP@0.5"):
            pc.add_column(c, justify="left" if c == "name" else "right")
        for r in rec["per_class"]:
            pc.add_row(str(r["category_id"]), r["name"], str(r["gt_instances"]), _fmt(r["AP50"]))
        console.print(pc)
    console.print("values in %; AP_S/AP_L split at 64×64 = 4096 px; — where undefined (no ground truth)")
