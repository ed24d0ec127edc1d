"""`wsis show`: PNG overlays of a dataset's labels and a contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar
from wsis_cli.cli.options import ImagesDir


@cli_errors
def show(
    dataset: Annotated[str, typer.Argument(help="COCO dataset (any supervision level); '-' = stdin.")],
    images: ImagesDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <image id>.png overlays and contact_sheet.png.")],
    ids: Annotated[str | None, typer.Option("--ids", help="Only these image ids: comma-separated, or a file (as for `data subset --ids`).")] = None,
    max_images: Annotated[int, typer.Option("--max", min=1, help="At most this many images.")] = 50,
) -> None:
    """Draw masks (per-instance colours), boxes and class names on the images; fallback
    (invalid GrabCut) masks are hatched with dashed outlines. Writes one PNG per image and
    contact_sheet.png."""
    from wsis_cli.coco import load_dataset, read_ids
    from wsis_cli.errors import InputError
    from wsis_cli.images import image_path, read_image, write_image
    from wsis_cli.show import contact_sheet, is_fallback, render_overlay

    if str(out) == "-" or (out.exists() and not out.is_dir()):
        raise typer.BadParameter(f"{out}: show writes PNG files into a folder", param_hint="--out")
    ds = load_dataset(dataset)
    if ids is not None:
        parts = [p.strip() for p in ids.split(",")]
        if all(p.lstrip("-").isdigit() for p in parts):
            wanted = [int(p) for p in parts]
        elif Path(ids).is_file():
            wanted = read_ids(ids)
        else:
            raise typer.BadParameter(f"{ids!r} is neither a comma-separated list of image ids nor a file",
                                     param_hint="--ids")
        unknown = [i for i in wanted if i not in ds.image_by_id]
        if unknown:
            raise InputError(ds.path, f"has no image {unknown[0]} (asked for by --ids)")
        chosen = [ds.image_by_id[i] for i in dict.fromkeys(wanted)]
    else:
        chosen = ds.images
    chosen = chosen[:max_images]
    paths = [image_path(images, im, dataset=ds.path) for im in chosen]  # all there before any drawing
    out.mkdir(parents=True, exist_ok=True)
    tiles, n_fallback = [], 0
    with progress_bar("drawing") as progress:
        for k, (im, path) in enumerate(zip(chosen, paths), start=1):
            anns = ds.anns_by_image[im["id"]]
            n_fallback += sum(is_fallback(a) for a in anns)
            pic = render_overlay(read_image(path), anns, ds.category_by_id)
            write_image(out / f"{im['id']}.png", pic)
            tiles.append((f"{im['id']}: {len(anns)}", pic))
            progress(k, len(chosen))
    write_image(out / "contact_sheet.png", contact_sheet(tiles))
    info(f"wrote {len(chosen)} overlays and contact_sheet.png to {out}/ ({n_fallback} fallback masks drawn hatched)")
