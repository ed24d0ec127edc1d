"""`wsis budget`: annotation cost of a strong + weak configuration."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, write_output
from wsis_cli.cli.options import JsonFlag, Quiet


@cli_errors
def budget(
    strong: Annotated[int, typer.Option("--strong", min=0, help="Images with full masks.")] = 0,
    weak: Annotated[int, typer.Option("--weak", min=0, help="Weakly labelled images.")] = 0,
    weak_type: Annotated[str, typer.Option("--weak-type", help="Weak label type: il, ilc, box or full.")] = "ilc",
    as_json: JsonFlag = False,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Also write the JSON record to this file.")] = None,
    classes: Annotated[int, typer.Option("--classes", min=0, help="C: classes in the label set (a whole number).")
                       ] = 20,
    classes_per_image: Annotated[float, typer.Option("--classes-per-image", help="c̄: classes present per image.")] = 1.5,
    objects_per_image: Annotated[float, typer.Option("--objects-per-image", help="n̄: objects per image.")] = 2.8,
    t_class: Annotated[float, typer.Option("--t-class", help="Seconds to verify one class.")] = 1.0,
    t_count: Annotated[float, typer.Option("--t-count", help="Seconds to count one present class.")] = 1.48,
    t_mask: Annotated[float, typer.Option("--t-mask", help="Seconds to draw one mask.")] = 79.0,
    t_box: Annotated[float, typer.Option("--t-box", help="Seconds to click one box.")] = 7.0,
    quiet: Quiet = False,
) -> None:
    """Annotation cost in seconds, hours and days (the mask-guided paper's Table 1 model).

    A table goes to stderr; --json prints the record on stdout, --out writes it to a file. In the
    record counts (images, classes) are integers and times (seconds, hours, days) floats.

    Defaults are the paper's Pascal VOC figures: 20 s (il), 22.22 s (ilc), 38.1 s (box) and
    239.7 s (full) per image. Days are 86,400 s.
    """
    from wsis_cli.budget import WEAK_TYPES, CostModel
    from wsis_cli.budget import budget as compute
    from wsis_cli.coco import provenance

    if weak_type not in WEAK_TYPES:
        raise typer.BadParameter(f"must be one of {', '.join(WEAK_TYPES)}", param_hint="--weak-type")
    values = {"--classes": classes, "--classes-per-image": classes_per_image, "--objects-per-image": objects_per_image,
              "--t-class": t_class, "--t-count": t_count, "--t-mask": t_mask, "--t-box": t_box}
    for option, value in values.items():  # the cost model's own checks, as usage errors naming the option
        if not (math.isfinite(value) and value >= 0):
            raise typer.BadParameter(f"must be a finite number >= 0, got {value}", param_hint=option)
    if classes_per_image > classes:
        raise typer.BadParameter(f"{classes_per_image} classes per image exceeds --classes {classes}",
                                 param_hint="--classes-per-image")
    model = CostModel(classes=classes, classes_per_image=classes_per_image, objects_per_image=objects_per_image,
                      t_class=t_class, t_count=t_count, t_mask=t_mask, t_box=t_box)
    rec = compute(strong=strong, weak=weak, weak_type=weak_type, model=model)
    rec["info"] = {"wsis": provenance("budget", {"strong": strong, "weak": weak, "weak_type": weak_type})}
    if out:
        write_output(out, rec, indent=2)
    if as_json:
        write_output("-", rec, indent=2)
        return
    _print_table(rec)


def _print_table(rec: dict) -> None:
    from rich.table import Table

    from wsis_cli.cli.io import err_console as console

    per = rec["per_image_seconds"]
    t = Table(title="Annotation budget", title_justify="left")
    for col in ("part", "images", "type", "s/image", "seconds", "hours", "days"):
        t.add_column(col, justify="left" if col in ("part", "type") else "right")
    s, w, tot = rec["strong"], rec["weak"], rec["total"]
    t.add_row("strong", f"{s['images']:,}", "full", f"{per['full']:.2f}", f"{s['seconds']:,.0f}",
              f"{s['hours']:,.1f}", f"{s['days']:.2f}")
    t.add_row("weak", f"{w['images']:,}", w["type"], f"{per[w['type']]:.2f}", f"{w['seconds']:,.0f}",
              f"{w['hours']:,.1f}", f"{w['days']:.2f}")
    t.add_row("total", f"{s['images'] + w['images']:,}", "", "", f"{tot['seconds']:,.0f}",
              f"{tot['hours']:,.1f}", f"{tot['days']:.2f}", style="bold")
    console.print(t)
    console.print("per image: " + ", ".join(f"{k} {v:.2f} s" for k, v in per.items()))
    eq = rec["equivalent_full_images"]
    if eq is not None:
        console.print(f"the same budget buys {eq:,.0f} fully annotated images")
