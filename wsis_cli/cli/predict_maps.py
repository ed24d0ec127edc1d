"""`wsis predict-maps`: class score maps from a trained segmenter, for `pseudolabel ccgr --maps`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar, warn
from wsis_cli.cli.options import Device, ImagesDir, Overwrite, Quiet


@cli_errors
def predict_maps(
    model: Annotated[Path, typer.Argument(metavar="SEG.pt", help="Checkpoint of `wsis train segmenter`.")],
    images: ImagesDir,
    dataset: Annotated[str, typer.Option("--dataset", help="COCO dataset naming the images; each image's annotations "
                                                           "(any kind) name the classes it gets planes for. "
                                                           "'-' = stdin.")],
    out: Annotated[Path, typer.Option("--out", "-o", file_okay=False,
                                      help="Folder of the score maps, one MAPS/<image stem>.npz per labelled image "
                                           "(made when absent).")],
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Write each labelled image's class score maps: the segmenter's softmax over background and
    the image's labelled classes (the labels say the rest are absent), one plane per labelled
    class, at the segmenter's --size square (the reader resizes them to the image). Images
    without labels get no file. A folder holding maps already needs --overwrite (its .npz files
    are removed first). Writes nothing to stdout.
    """
    from wsis_cli.coco import load_dataset
    from wsis_cli.pseudo.segmenter_maps import predict_maps as run

    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file; give a folder", param_hint="--out")
    ds = load_dataset(dataset)
    with progress_bar("score maps") as progress:
        summary = run(ds, images_dir=images, model=model, out_dir=out, device=device, overwrite=overwrite,
                      progress=progress, warn=warn)
    skipped = [f"{summary[k]} {what}" for k, what in (("unlabelled", "without labels"),
                                                      ("unknown_only", "with only unknown classes")) if summary[k]]
    info(f"wrote {summary['written']} score map files to {out}" + (f" ({', '.join(skipped)}: no file)" if skipped else ""))
