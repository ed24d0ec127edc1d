"""`wsis show`: PNG overlays of a dataset's labels and a contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar
from wsis_cli.cli.options import ImagesDir, Quiet, image_ids


@cli_errors
def show(
    dataset: Annotated[str, typer.Argument(help="COCO dataset (any supervision level); '-' = stdin.")],
    images: ImagesDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <image id>.png overlays and contact_sheet.png.")],
    ids: Annotated[str | None, typer.Option("--ids", help="Only these image ids: comma-separated, or a file (as for `data subset --ids`).")] = None,
    max_images: Annotated[int, typer.Option("--max", min=1, help="At most this many images.")] = 50,
    quiet: Quiet = False,
) -> None:
    """Draw masks (per-instance colours), boxes and class names on the images; fallback
    (invalid GrabCut) masks are hatched with dashed outlines. Writes one PNG per image and
    contact_sheet.png."""
    from wsis_cli.coco import load_dataset
    from wsis_cli.errors import InputError
    from wsis_cli.show import show_dataset

    if str(out) == "-" or (out.exists() and not out.is_dir()):
        raise typer.BadParameter(f"{out}: show writes PNG files into a folder", param_hint="--out")
    ds = load_dataset(dataset)
    if ids is not None:
        wanted = image_ids(ids)
        unknown = [i for i in wanted if i not in ds.image_by_id]
        if unknown:
            raise InputError(ds.path, f"has no image {unknown[0]} (asked for by --ids)")
        chosen = [ds.image_by_id[i] for i in dict.fromkeys(wanted)]
    else:
        chosen = ds.images
    chosen = chosen[:max_images]
    with progress_bar("drawing") as progress:
        n_fallback = show_dataset(ds, chosen, images, out, progress=progress)
    info(f"wrote {len(chosen)} overlays and contact_sheet.png to {out}/ ({n_fallback} fallback masks drawn hatched)")
