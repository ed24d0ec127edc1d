"""`wsis data`: make, convert, weaken and split datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar, warn, write_output
from wsis_cli.cli.options import Out, Overwrite, Quiet, Seed, image_ids

app = typer.Typer(help="Make, convert, weaken and split COCO datasets.", no_args_is_help=True)


@app.command("synth")
@cli_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create: OUT/images/*.png and OUT/gt.json.")],
    n: Annotated[int, typer.Option("--n", min=1, max=1_000_000, help="Number of images.")] = 200,
    size: Annotated[int, typer.Option("--size", min=32, max=4096, help="Image side in pixels.")] = 256,
    classes: Annotated[int, typer.Option("--classes", min=1, max=4, help="Number of shape classes (disc, box, triangle, star).")] = 4,
    overwrite: Overwrite = False,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Synthesise a demo set: textured shapes on textured backgrounds, with full masks."""
    from wsis_cli.coco import provenance
    from wsis_cli.synth import synthesize

    if str(out) == "-":
        raise typer.BadParameter("synth writes a folder (images/ and gt.json), not stdout", param_hint="--out")
    with progress_bar("synthesising") as progress:
        ds = synthesize(out, n=n, size=size, seed=seed, n_classes=classes, overwrite=overwrite, progress=progress)
    ds["info"]["wsis"] = provenance("data synth", {"out": out, "n": n, "size": size, "classes": classes}, seed)
    write_output(out / "gt.json", ds)
    info(f"wrote {n} images and {len(ds['annotations'])} instances to {out}/ (gt.json, images/)")


@app.command("weaken")
@cli_errors
def weaken(
    gt: Annotated[str, typer.Argument(help="Fully annotated COCO dataset; '-' = stdin.")],
    to: Annotated[str, typer.Option("--to", help="Target supervision: box, ilc (image labels + counts) or il (image labels).")],
    out: Out = "-",
    quiet: Quiet = False,
) -> None:
    """Strip a dataset to box, image-level-with-counts or image-level labels (ids kept)."""
    from wsis_cli.coco import load_dataset, provenance
    from wsis_cli.weaken import LEVELS
    from wsis_cli.weaken import weaken as strip

    if to not in LEVELS:
        raise typer.BadParameter(f"must be one of {', '.join(LEVELS)}", param_hint="--to")
    ds = strip(load_dataset(gt), to)
    write_output(out, ds.to_json(provenance("data weaken", {"gt": gt, "to": to})))
    info(f"{len(ds.annotations)} {to} labels on {len(ds.images)} images")


@app.command("voc")
@cli_errors
def voc(
    root: Annotated[Path, typer.Argument(help="VOC 2012 root (JPEGImages, SegmentationObject, ...) or SBD root (img, inst).")],
    split: Annotated[str, typer.Option("--split", help="train or val (any split list in the tree).")] = "train",
    out: Out = "-",
    quiet: Quiet = False,
) -> None:
    """Convert PASCAL VOC 2012 / SBD instance annotations to COCO (255 = void, in no mask)."""
    from wsis_cli.coco import provenance
    from wsis_cli.voc import convert_voc

    with progress_bar(f"converting {split}") as progress:
        ds = convert_voc(root, split=split, progress=progress)
    ds["info"]["wsis"] = provenance("data voc", {"root": root, "split": split})
    write_output(out, ds)
    info(f"{len(ds['images'])} images, {len(ds['annotations'])} instances; images under {ds['info']['images_dir']}")


@app.command("subset")
@cli_errors
def subset(
    dataset: Annotated[str, typer.Argument(help="COCO dataset; '-' = stdin.")],
    ids: Annotated[str | None, typer.Option("--ids", help="Image ids: comma-separated, or a file of them (text, JSON list, or `wsis select` output).")] = None,
    n: Annotated[int | None, typer.Option("--n", min=0, help="Take K random images instead of --ids.")] = None,
    complement: Annotated[bool, typer.Option("--complement", help="Keep every image except those chosen.")] = False,
    seed: Seed = 0,
    out: Out = "-",
    quiet: Quiet = False,
) -> None:
    """A subset of a dataset by image ids (or K random images), annotations included."""
    from wsis_cli.coco import display_name, load_dataset, provenance
    from wsis_cli.subset import subset_dataset

    if (ids is None) == (n is None):
        raise typer.BadParameter("give exactly one of --ids FILE or --n K", param_hint="--ids/--n")
    if dataset == "-" and ids == "-":
        raise typer.BadParameter("the dataset and --ids cannot both be read from stdin", param_hint="--ids")
    ds = load_dataset(dataset)
    chosen = image_ids(ids) if ids is not None else None
    sub = subset_dataset(ds, ids=chosen, n=n, complement=complement, seed=seed,
                         ids_source=display_name(ids) if ids is not None else "--ids")
    write_output(out, sub.to_json(provenance("data subset", {"dataset": dataset, "ids": ids, "n": n,
                                                              "complement": complement}, seed)))
    info(f"{len(sub.images)} of {len(ds.images)} images, {len(sub.annotations)} annotations")


@app.command("merge")
@cli_errors
def merge(
    datasets: Annotated[list[str], typer.Argument(help="COCO datasets with one label set (e.g. shard outputs).")],
    out: Out = "-",
    renumber: Annotated[bool, typer.Option("--renumber", help="Number the annotations 1..N in input order instead "
                                                              "of matching them by id (e.g. strong masks + "
                                                              "pseudo-labels, whose ids clash).")] = False,
    quiet: Quiet = False,
) -> None:
    """Join datasets (e.g. `--shard K/N` outputs): ids kept, images and annotations by id,
    an id with two different records is an error (with --renumber, annotations get new ids)."""
    from wsis_cli.coco import load_dataset, provenance
    from wsis_cli.merge import made_differently, merge_datasets

    if sum(d == "-" for d in datasets) > 1:
        raise typer.BadParameter("stdin ('-') can be read once", param_hint="DATASETS")
    parts = [load_dataset(d) for d in datasets]
    merged = merge_datasets(parts, renumber=renumber)
    inputs = [p.info.get("wsis") for p in parts]
    if made_differently(inputs):
        warn("the inputs were made with different options (see info.wsis.inputs of the output)")
    prov = provenance("data merge", {"datasets": datasets, "renumber": renumber})
    prov["inputs"] = inputs
    write_output(out, merged.to_json(prov))
    info(f"{len(merged.images)} images, {len(merged.annotations)} annotations from {len(datasets)} files")
