"""`wsis predict`: run a trained model over images and write COCO results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.io import cli_errors, info, progress_bar, write_output
from wsis_cli.cli.options import Device, ImagesDir, Out, Quiet, Seed, choice


@cli_errors
def predict(
    run: Annotated[Path, typer.Argument(metavar="RUN", exists=True,
                                        help="Run folder of `wsis train maskrcnn` (its best.pt) or a checkpoint file.")],
    images: ImagesDir,
    dataset: Annotated[str | None, typer.Option("--dataset", help="COCO dataset naming the images (and their ids) to "
                                                                  "predict on; without it, every image file in "
                                                                  "--images, ids 1..N in file-name order.")] = None,
    out: Out = "-",
    score_thr: Annotated[float, typer.Option("--score-thr", min=0.0, max=1.0,
                                             help="Keep detections scoring at least this.")] = 0.05,
    small_branch: Annotated[Path | None, typer.Option("--small-branch", exists=True,
                                                      help="A box-only run (train maskrcnn --boxes-only): the hybrid "
                                                           "fusion. Its detections get GrabCut masks (an ellipse when "
                                                           "invalid, see --fusion); instances under --small-area come "
                                                           "from NMS over both branches, larger ones from RUN alone.")
                                   ] = None,
    fusion: Annotated[str, typer.Option("--fusion", help="With --small-branch, where the small branch's instances get "
                                                         "masks: paper (GrabCut, the ellipse where invalid), mask-head "
                                                         "(RUN's mask head in the detected box) or valid-or-head "
                                                         "(GrabCut where valid, else the mask head).")] = "paper",
    small_area: Annotated[float, typer.Option("--small-area", min=1.0, help="With --small-branch, the box area in px "
                                                                            "below which an instance is small (the "
                                                                            "paper: 64x64).")] = 4096.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 1,
    device: Device = "auto",
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Instance masks (compressed RLE), boxes and scores for every image, as a COCO results list;
    `iou` (the predicted mask IoU) too when the model has the IoU head."""
    from wsis_cli.coco import display_name, load_dataset
    from wsis_cli.engine.predictor import Predictor
    from wsis_cli.images import folder_images

    from wsis_cli.pseudo.hybrid import RULES

    fusion_rule = choice(fusion, RULES, "--fusion")
    if small_branch is None:
        for name, value, default in (("--fusion", fusion, "paper"), ("--small-area", small_area, 4096.0)):
            if value != default:
                raise typer.BadParameter("goes with --small-branch", param_hint=name)
    ds = load_dataset(dataset) if dataset is not None else None
    predictor = Predictor.from_run(run, device)
    fusion = None
    if small_branch is not None:
        from wsis_cli.pseudo.hybrid import HybridFusion

        fusion = HybridFusion(predictor, Predictor.from_run(small_branch, predictor.device), seed=seed,
                              score_thr=score_thr, small_area=small_area, rule=fusion_rule, large_name=str(run),
                              small_name=str(small_branch))
    todo = ds.images if ds is not None else folder_images(images)
    with progress_bar("predicting") as progress:
        results = predictor.predict_images(todo, images, dataset=ds, score_thr=score_thr, batch_size=batch_size,
                                           transform=fusion, progress=progress)
    write_output(out, results)
    line = f"{len(results)} detections in {len(todo)} images"
    if dataset is None:
        line += f" (image ids 1..{len(todo)} in file-name order of {images})"
    else:
        line += f" of {display_name(dataset)}"
    if fusion is not None:
        c = fusion.counts
        how = f"{c['ellipses']} ellipses" if fusion_rule == "paper" else f"{c['mask_head']} masks from the mask head"
        line += f"; {c['from_small_branch']} from the small branch ({how})"
    info(line)
