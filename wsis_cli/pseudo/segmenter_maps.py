"""Class score maps from a trained segmenter (``wsis predict-maps``): the SS branch's hand-over
to ``pseudolabel ccgr --maps``.

Each image of the dataset is resized to the segmenter's square training side ``S`` (its
checkpoint's ``size``), and the network's logits of background and of **the image's labelled
classes only** (the categories of its annotations, of any kind, that the model was trained on)
become a softmax over those: the image-level labels say the other classes are absent, so their
share goes to the classes present or to the background. Those planes are written to
``DIR/<stem>.npz`` by
:func:`wsis_cli.pseudo.scoremaps.write_score_maps`: ``scores float32 (K_image, S, S)`` and
``category_ids int64 (K_image,)``. The planes stay at ``S x S``: the reader resizes them to the
image (bilinear), which undoes the square resize. An image without labels, or whose labels the
model does not know, gets no file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wsis_cli.coco import Dataset
from wsis_cli.errors import WsisError

__all__ = ["class_probabilities", "predict_maps"]


@torch.inference_mode()
def class_probabilities(model, rgb: np.ndarray, size: int, device: torch.device,
                        planes: list[int] | None = None) -> np.ndarray:
    """``float32 (P, size, size)``: the softmax of ``model`` (a
    :class:`~wsis_cli.models.segmenter.Segmenter`) on ``rgb`` (``HxWx3`` uint8) resized to a square,
    over the output planes ``planes`` (0 = background; None: all ``K + 1``), in that order."""
    from wsis_cli.models.classifier import image_tensor

    x = image_tensor(rgb, size)[None].to(device)
    logits = model(x).float()[0]
    if planes is not None:
        logits = logits[planes]
    return torch.softmax(logits, dim=0).cpu().numpy()


def predict_maps(ds: Dataset, *, images_dir: str | os.PathLike, model: str | os.PathLike,
                 out_dir: str | os.PathLike, device: "str | torch.device" = "auto", overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 warn: Callable[[str], None] | None = None) -> dict:
    """Write the score map file of every labelled image of ``ds`` (see the module docstring).

    Args:
        ds: any COCO dataset; an image's annotations name its classes.
        images_dir: the folder its ``file_name`` entries are relative to.
        model: a checkpoint from ``wsis train segmenter``.
        out_dir: the folder of the ``.npz`` files (made when absent). One that holds ``.npz``
            files already is refused unless ``overwrite``; then they are removed first, so no
            earlier run's map outlives it.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (or a torch.device).
    Returns:
        ``{"images", "written", "unlabelled", "unknown_only"}``: images in ``ds``, files written,
        images without labels, images whose labels the model does not know (no file for either).
    """
    from wsis_cli.engine.device import resolve_device
    from wsis_cli.engine.train_segmenter import load_segmenter
    from wsis_cli.images import image_path, read_sized_image
    from wsis_cli.pseudo.scoremaps import map_path, write_score_maps

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    net, config = load_segmenter(model, device=dev)
    plane_of = {int(c): k + 1 for k, c in enumerate(config["category_ids"])}
    missing = sorted({a["category_id"] for a in ds.annotations} - set(plane_of))
    if missing and warn:
        names = [str(ds.category_by_id[c].get("name", c)) for c in missing]
        warn(f"{model}: the segmenter was not trained on categories {missing} ({', '.join(names)}): no maps for them")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WsisError(f"{out}: is a file, expected a folder for the score maps")
    old = sorted(out.glob("*.npz")) if out.is_dir() else []
    if old and not overwrite:
        raise WsisError(f"{out}: holds score maps already ({len(old)} .npz files); add --overwrite to replace them")
    for f in old:
        f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    summary = {"images": len(ds.images), "written": 0, "unlabelled": 0, "unknown_only": 0}
    for n, im in enumerate(ds.images, 1):
        labelled = sorted({a["category_id"] for a in ds.anns_by_image[im["id"]]})
        ids = [c for c in labelled if c in plane_of]
        if not labelled or not ids:
            summary["unlabelled" if not labelled else "unknown_only"] += 1
        else:
            rgb = read_sized_image(image_path(images_dir, im, dataset=ds.path), im, ds.path)
            probs = class_probabilities(net, rgb, int(config["size"]), dev, [0, *(plane_of[c] for c in ids)])
            write_score_maps(map_path(out, im), probs[1:], ids)
            summary["written"] += 1
        if progress:
            progress(n, len(ds.images))
    return summary
