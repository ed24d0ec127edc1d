"""Peak response maps (PRM, Zhou et al. 2018): one instance per class peak, with its mask.

For each image and each class it is labelled with:

1. the class response map (CRM) of the classifier, at stride 16 of the network input;
2. its peaks (:func:`wsis_cli.pseudo.peaks.find_peaks`: ``peak_kernel`` window, above the
   median). With a count ``k`` (IL+C labels) the ``k`` strongest are kept; without one (IL),
   those whose value is at least ``peak_rel`` times the strongest's (and above 0);
3. every kept peak's *peak response map*: the gradient of the peak's CRM value with respect to
   the stride-4 features, times those features, summed over channels, negatives dropped
   (gradient x activation read at stride 4). All peaks of an image are back-propagated in one
   batched pass: the stride-4 features are repeated once per peak and the sum of each copy's
   own peak is differentiated;
4. the instance mask, the documented rule: the PRM, resized to the image and divided by its
   maximum, thresholded at ``prm_thr``; the connected part holding the peak (else the largest)
   is the *region*. With ``refine="grabcut"``, GrabCut then runs in the region's box grown by
   ``margin`` of its side on each side (two CRM cells at least): region pixels are probable foreground, pixels at ``2 x prm_thr``
   and above sure foreground, the rest of the crop probable background, outside it background;
   its result (the part holding the peak) replaces the region unless it comes out empty.
   Pixels claimed by two instances go to the one whose normalised PRM is higher there.

Each instance gets its box (from the mask), the peak ``point`` in image pixels and a ``score``
(the sigmoid of the peak value). The class score maps saved for CCGR are the CRMs at stride 4,
rectified and divided by their maximum over the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wsis_cli.coco import labels_of
from wsis_cli.pseudo.grabcut import grabcut_trimap
from wsis_cli.pseudo.labels import Instance, PseudoLabels
from wsis_cli.pseudo.peaks import find_peaks, subpixel

__all__ = ["PRMConfig", "REFINES", "image_instances", "peak_response_maps", "prm_mask", "pseudolabel_prm",
           "summary_line"]

# the record: new fields in this order (bbox after the mask, the peak as "point")
LAYOUT = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "score", "point", "wsis")

REFINES = ("grabcut", "none")


@dataclass(frozen=True)
class PRMConfig:
    peak_kernel: int = 3
    peak_rel: float = 0.5  # IL labels: keep peaks >= this x the class's strongest peak
    prm_thr: float = 0.15  # region: PRM >= this x its max
    refine: str = "grabcut"
    margin: float = 0.5
    grabcut_iters: int = 5
    batch: int = 16  # peaks back-propagated together
    seed: int = 0

    def __post_init__(self) -> None:
        from wsis_cli.errors import WsisError

        if self.refine not in REFINES:
            raise WsisError(f"--refine must be one of {', '.join(REFINES)}, got {self.refine!r}")
        if self.peak_kernel < 1 or self.peak_kernel % 2 == 0:
            raise WsisError(f"--peak-kernel must be an odd number >= 1, got {self.peak_kernel}")
        if not 0.0 < self.prm_thr < 1.0:
            raise WsisError(f"--prm-thr must be in (0, 1), got {self.prm_thr}")

    def to_dict(self) -> dict:
        return asdict(self)


def peak_response_maps(model, x: torch.Tensor, peaks: list[tuple[int, int, int]], *, batch: int = 16) -> np.ndarray:
    """Peak response maps of peaks of one image, back-propagated together.

    Args:
        model: a :class:`~wsis_cli.models.classifier.PeakClassifier` in eval mode.
        x (FloatTensor[1, 3, H, W]): the network input.
        peaks: ``(class index, row, col)`` on the CRM grid.
        batch: peaks per backward pass (memory bound).
    Returns:
        ``float32 (P, H/4, W/4)``, each map >= 0.
    """
    if not peaks:
        return np.zeros((0, 1, 1), dtype=np.float32)
    with torch.no_grad():
        f4 = model.features_stride4(x)
    out = []
    for start in range(0, len(peaks), batch):
        part = peaks[start:start + batch]
        f = f4.expand(len(part), -1, -1, -1).clone().requires_grad_(True)
        crm = model.crm_from_stride4(f)
        k = torch.tensor([p[0] for p in part])
        r = torch.tensor([p[1] for p in part])
        c = torch.tensor([p[2] for p in part])
        picked = crm[torch.arange(len(part)), k, r, c]
        (grad,) = torch.autograd.grad(picked.sum(), f)
        out.append(F.relu((grad * f).sum(dim=1)).detach().float().cpu().numpy())
    return np.concatenate(out, axis=0)


def _component_with(mask: np.ndarray, point_rc: tuple[int, int]) -> np.ndarray:
    import cv2

    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask
    k = lab[point_rc]
    if k == 0:
        sizes = np.bincount(lab.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
    return lab == k


def prm_mask(rgb: np.ndarray, prm: np.ndarray, point_xy: tuple[float, float], cfg: PRMConfig,
             seed: int = 0, min_margin: float = 0.0) -> np.ndarray:
    """The instance mask ``bool (H, W)`` from a PRM already at the image's size (see the module
    docstring, step 4)."""
    import cv2

    h, w = prm.shape
    top = float(prm.max())
    if top <= 0:
        return np.zeros((h, w), dtype=bool)
    norm = prm / top
    pr = (min(max(int(point_xy[1]), 0), h - 1), min(max(int(point_xy[0]), 0), w - 1))
    region = _component_with(norm >= cfg.prm_thr, pr)
    if cfg.refine == "none" or not region.any():
        return region
    ys, xs = np.nonzero(region)
    bw, bh = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
    mx, my = max(cfg.margin * bw, min_margin), max(cfg.margin * bh, min_margin)
    x1 = max(int(xs.min() - mx) - 1, 0)
    y1 = max(int(ys.min() - my) - 1, 0)
    x2 = min(int(xs.max() + 1 + mx) + 1, w)
    y2 = min(int(ys.max() + 1 + my) + 1, h)
    crop = np.ascontiguousarray(rgb[y1:y2, x1:x2, ::-1])  # OpenCV wants BGR
    seeds = np.full((y2 - y1, x2 - x1), cv2.GC_PR_BGD, np.uint8)
    r = region[y1:y2, x1:x2]
    seeds[r] = cv2.GC_PR_FGD
    seeds[r & (norm[y1:y2, x1:x2] >= min(2 * cfg.prm_thr, 0.95))] = cv2.GC_FGD
    # the crop's border is background unless the image ends there
    if y1 > 0:
        seeds[0, :] = cv2.GC_BGD
    if y2 < h:
        seeds[-1, :] = cv2.GC_BGD
    if x1 > 0:
        seeds[:, 0] = cv2.GC_BGD
    if x2 < w:
        seeds[:, -1] = cv2.GC_BGD
    if not (seeds == cv2.GC_PR_BGD).any() and not (seeds == cv2.GC_BGD).any():
        return region  # nothing to tell the object from
    fg = grabcut_trimap(crop, seeds, iters=cfg.grabcut_iters, seed=seed)
    if fg is None or not fg.any():
        return region
    full = np.zeros((h, w), dtype=bool)
    full[y1:y2, x1:x2] = fg
    return _component_with(full, pr)


def image_instances(model, rgb: np.ndarray, labels: dict[int, int | None], config: dict, cfg: PRMConfig, *,
                    device: torch.device, with_maps: bool = False) -> tuple[list[dict], np.ndarray | None, list[int]]:
    """Instances of one image.

    Args:
        model: the classifier (eval mode, on ``device``).
        rgb: ``uint8 (H, W, 3)``.
        labels: ``{category_id: count or None}``, the image's labels.
        config: the checkpoint's model config (``category_ids``, ``size``).
        cfg: the PRM options.
        with_maps: also return the class score maps.
    Returns:
        ``([{"category_id", "mask" bool (H, W), "point" [x, y], "score", "peak"}], maps, map ids)``:
        maps is ``float32 (K, H/4, W/4)`` in 0..1 for the labelled classes the model knows
        (``None`` unless ``with_maps``).
    """
    import cv2

    from wsis_cli.models.classifier import image_tensor

    h, w = rgb.shape[:2]
    size = int(config["size"])
    index = {int(c): i for i, c in enumerate(config["category_ids"])}
    x = image_tensor(rgb, size)[None].to(device)
    with torch.no_grad():
        crm = model(x)[0].float().cpu().numpy()  # (K, size/16, size/16)
    stride = size / crm.shape[1], size / crm.shape[2]
    sx, sy = w / size, h / size
    peaks: list[tuple[int, int, int]] = []
    found: list[dict] = []
    for cid in sorted(labels):
        if cid not in index:
            continue
        k = index[cid]
        rc, values = find_peaks(crm[k], kernel=cfg.peak_kernel)
        count = labels[cid]
        if count is not None:
            keep = np.arange(min(int(count), len(values)))
        else:
            keep = np.flatnonzero((values >= cfg.peak_rel * values[0]) & (values > 0)) if len(values) else []
        xy = subpixel(crm[k], rc[keep]) if len(keep) else np.zeros((0, 2))
        for j, (px, py) in zip(keep, xy):
            peaks.append((k, int(rc[j, 0]), int(rc[j, 1])))
            found.append({"category_id": cid, "peak": float(values[j]),
                          "point": [float(px * stride[1] * sx), float(py * stride[0] * sy)]})
    prms = peak_response_maps(model, x, peaks, batch=cfg.batch)
    norm_maps = []
    for inst, prm in zip(found, prms):
        full = cv2.resize(prm, (w, h), interpolation=cv2.INTER_LINEAR)
        top = full.max()
        norm_maps.append(full / top if top > 0 else full)
        inst["mask"] = prm_mask(rgb, full, inst["point"], cfg, seed=cfg.seed,
                                min_margin=2 * stride[0] * max(sx, sy))
        inst["score"] = float(1 / (1 + np.exp(-inst["peak"])))
    if len(found) > 1:  # a pixel claimed twice goes to the instance whose PRM is higher there
        stack = np.stack([m["mask"] for m in found])
        contested = stack.sum(axis=0) > 1
        if contested.any():
            owner = np.argmax(np.where(stack, np.stack(norm_maps), -1.0), axis=0)
            for i, inst in enumerate(found):
                inst["mask"] = inst["mask"] & (~contested | (owner == i))
    maps, map_ids = None, []
    if with_maps:
        keep_ids = [cid for cid in sorted(labels) if cid in index]
        t = torch.from_numpy(crm[[index[c] for c in keep_ids]])[None]
        up = F.interpolate(t, scale_factor=4, mode="bilinear", align_corners=False)[0].clamp(min=0).numpy()
        top = up.reshape(len(keep_ids), -1).max(axis=1) if keep_ids else np.zeros(0)
        maps = (up / np.maximum(top, 1e-12)[:, None, None]).astype(np.float32)
        map_ids = keep_ids
    return found, maps, map_ids


def pseudolabel_prm(ds, *, images_dir, model, cfg: PRMConfig, device: str | torch.device = "auto",
                    shard: str | None = None, save_maps=None, progress=None, warn=None) -> PseudoLabels:
    """One instance per class peak in each of ``ds``'s images (slice ``shard`` = ``"K/N"``, or all).

    Args:
        ds: a dataset of image-level labels (:func:`wsis_cli.coco.labels_of`).
        images_dir: the folder its ``file_name`` entries are relative to.
        model: a classifier checkpoint from ``wsis train classifier``.
        cfg: the PRM options; ``cfg.seed`` seeds torch (after the model is loaded) and GrabCut.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (or a torch.device).
        save_maps: a folder for the class score maps (``<stem>.npz``), or None.
    Returns:
        The instances (ids 1..N; box from the mask, ``score``, the peak as ``point`` and
        ``"wsis": {"peak"}``), instances left empty by stronger ones dropped.
    """
    from wsis_cli.coco import provenance
    from wsis_cli.engine.train_classifier import load_classifier
    from wsis_cli.engine.device import resolve_device
    from wsis_cli.jobs import parse_shard, shard_images

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    net, config = load_classifier(model, device=dev)
    images = shard_images(ds.images, parse_shard(shard))
    torch.manual_seed(cfg.seed)
    known = set(int(c) for c in config["category_ids"])
    missing = sorted({a["category_id"] for a in ds.annotations} - known)
    if missing and warn:
        names = [ds.category_by_id[c].get("name", c) for c in missing]
        warn(f"the model was not trained on categories {missing} ({', '.join(map(str, names))}): no instances for them")
    rows: list[Instance] = []
    summary = {"images": len(images), "instances": 0, "empty_masks": 0,  # dropped
               "short_of_count": 0}
    for n, im in enumerate(images, 1):
        rows.extend(_image_rows(ds, im, images_dir, net, config, cfg, dev, save_maps, summary, first_id=len(rows) + 1))
        if progress:
            progress(n, len(images))
    summary["instances"] = len(rows)
    options = {"labels": ds.path, "images": str(images_dir), "model": str(model),
               "save_maps": str(save_maps) if save_maps else None, "shard": shard, **cfg.to_dict()}
    prov = {**provenance("pseudolabel prm", options, cfg.seed), "summary": summary}
    return PseudoLabels.from_instances(rows, source=ds, images=images, summary=summary, provenance=prov,
                                       bbox_decimals=None, layout=LAYOUT)


def _image_rows(ds, im: dict, images_dir, net, config: dict, cfg: PRMConfig, device, save_maps, summary: dict, *,
                first_id: int) -> list[Instance]:
    """The instances of one image (ids from ``first_id``); counts into ``summary``; its maps saved."""
    from wsis_cli.boxes import mask_to_box
    from wsis_cli.images import image_path, read_image
    from wsis_cli.pseudo.scoremaps import map_path, write_score_maps

    labels = labels_of(ds.anns_by_image[im["id"]])
    rgb = read_image(image_path(images_dir, im, dataset=ds.path))
    if rgb.shape[:2] != (im["height"], im["width"]):
        from wsis_cli.errors import InputError

        raise InputError(ds.path, f"the image file is {rgb.shape[1]}x{rgb.shape[0]} px, the record says "
                                  f"{im['width']}x{im['height']}", f"image {im['id']}")
    found, maps, map_ids = image_instances(net, rgb, labels, config, cfg, device=device,
                                           with_maps=save_maps is not None)
    known = set(int(c) for c in config["category_ids"])
    for cid, count in labels.items():
        got = sum(1 for f in found if f["category_id"] == cid)
        if count is not None and cid in known and got < count:
            summary["short_of_count"] += count - got
    rows = []
    for inst in found:
        mask = inst["mask"]
        if not mask.any():  # its pixels all went to stronger instances: nothing to train on
            summary["empty_masks"] += 1
            continue
        rows.append(Instance.from_mask(mask, id=first_id + len(rows), image_id=im["id"],
                                       category_id=inst["category_id"], box=mask_to_box(mask), score=inst["score"],
                                       method="prm", wsis={"peak": round(inst["peak"], 6)},
                                       fields={"iscrowd": 0, "point": [round(v, 2) for v in inst["point"]]}))
    if save_maps is not None:
        write_score_maps(map_path(save_maps, im), maps if maps is not None else np.zeros((0, 1, 1)), map_ids)
    return rows


def summary_line(summary: dict) -> str:
    """One line for people: instances, and counted instances without a peak."""
    parts = [f"{summary['instances']} instances in {summary['images']} images"]
    if summary["short_of_count"]:
        parts.append(f"{summary['short_of_count']} counted instances had no peak")
    if summary["empty_masks"]:
        parts.append(f"{summary['empty_masks']} peaks dropped (empty mask)")
    return "; ".join(parts)
