"""A trained detector, ready to run: numpy images in, :class:`~wsis_cli.detections.Detections` or
COCO results out (the segment-anything predictor's shape: the tensors stay inside)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from wsis_cli.coco import Dataset
from wsis_cli.detections import Detections, to_results
from wsis_cli.engine.checkpoint import load_model
from wsis_cli.engine.runs import run_file
from wsis_cli.errors import WsisError
from wsis_cli.images import image_path, read_sized_image
from wsis_cli.models.detector import FORMAT, VERSION, build_detector

__all__ = ["Predictor"]


def _to_tensor(rgb: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(dev).permute(2, 0, 1).float().div_(255.0)


@dataclass
class Predictor:
    """``model`` (a detector of :func:`~wsis_cli.models.detector.build_detector`), the ``config``
    it was built from, and the device it runs on."""

    model: torch.nn.Module
    config: dict
    device: torch.device

    @classmethod
    def from_run(cls, run: str | os.PathLike, device: "str | torch.device" = "cpu", *,
                 which: str = "best") -> "Predictor":
        """The model of a run folder (its ``best.pt``, or ``last.pt`` with ``which="last"``) or of a
        checkpoint file, in eval mode on ``device``."""
        from wsis_cli.engine.device import resolve_device

        dev = resolve_device(device) if isinstance(device, str) else device

        def build(config: dict) -> torch.nn.Module:
            model = build_detector(config, weights="none")
            model.transform.min_size = (int(config["min_size"]),)
            return model

        model, config = load_model(run_file(run, which), kind=FORMAT, version=VERSION, build=build, device=dev)
        return cls(model, config, dev)

    @property
    def has_masks(self) -> bool:
        return self.config["architecture"] == "maskrcnn"

    @property
    def has_iou_head(self) -> bool:
        return bool(self.config.get("iou_head"))

    @torch.no_grad()
    def detect(self, images: list[np.ndarray], *, score_thr: float = 0.05, max_dets: int = 100) -> list[Detections]:
        """Detections (with masks and predicted IoUs when the model has them) for RGB ``images``
        (each ``HxWx3`` uint8)."""
        heads = self.model.roi_heads
        heads.score_thresh = float(score_thr)
        heads.detections_per_img = int(max_dets)
        cats = np.asarray(self.config["category_ids"], dtype=np.int64)
        out = self.model([_to_tensor(im, self.device) for im in images])
        dets = []
        for im, r in zip(images, out):
            h, w = im.shape[:2]
            masks = (r["masks"][:, 0] > 0.5).cpu().numpy() if "masks" in r else None
            dets.append(Detections(r["boxes"].cpu().numpy(), r["scores"].cpu().numpy(),
                                   cats[r["labels"].cpu().numpy() - 1], h, w, masks=masks,
                                   ious=r["iou"].cpu().numpy() if "iou" in r else None))
        return dets

    @torch.no_grad()
    def masks_in_boxes(self, image: np.ndarray, boxes: np.ndarray, category_ids: np.ndarray) -> Detections:
        """The mask the model predicts inside each given box (``boxes`` float[N, 4], x1, y1, x2,
        y2 in ``image``'s pixels) for the given class: one detection per box, in order; ``scores``
        are the box head's probability of that class."""
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        if not self.has_masks:
            raise WsisError("this model has no mask branch (trained with --boxes-only)")
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return Detections.empty(h, w, ious=self.has_iou_head)
        index = {c: k + 1 for k, c in enumerate(self.config["category_ids"])}
        labels = torch.tensor([index[int(c)] for c in category_ids], dtype=torch.int64, device=self.device)
        images, _ = self.model.transform([_to_tensor(image, self.device)])
        feats = self.model.backbone(images.tensors)
        sh, sw = images.image_sizes[0]
        scale = torch.tensor([sw / w, sh / h, sw / w, sh / h], device=self.device)
        b = torch.from_numpy(boxes).to(self.device) * scale
        probs, scores, ious = self.model.roi_heads.segment_boxes(feats, b, labels, images.image_sizes)
        masks = paste_masks_in_image(probs, torch.from_numpy(boxes).to(self.device), (h, w))[:, 0] > 0.5
        return Detections(boxes, scores.cpu().numpy(), np.asarray(category_ids, dtype=np.int64), h, w,
                          masks=masks.cpu().numpy(), ious=None if ious is None else ious.cpu().numpy())

    def predict_images(self, images: list[dict], images_dir: str | os.PathLike, *, dataset: Dataset | None = None,
                       score_thr: float = 0.05, batch_size: int = 1,
                       transform: Callable[[dict, np.ndarray, Detections], Detections] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """COCO results for ``images`` (records with ``id``, ``file_name``, ``height``, ``width``)
        under ``images_dir`` (of ``dataset``, which messages name); ``transform(image, rgb,
        detections)`` may rewrite each image's detections (fusion)."""
        was = self.model.training
        self.model.eval()
        results: list[dict] = []
        name = dataset.path if dataset is not None else str(images_dir)
        try:
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                rgbs = [read_sized_image(image_path(images_dir, im, dataset=name), im, name) for im in chunk]
                for im, rgb, det in zip(chunk, rgbs, self.detect(rgbs, score_thr=score_thr)):
                    if transform is not None:
                        det = transform(im, rgb, det)
                    results.extend(to_results(im["id"], det))
                if progress:
                    progress(min(start + batch_size, len(images)), len(images))
        finally:
            self.model.train(was)
        return results

    def map50(self, dataset: Dataset, images_dir: str | os.PathLike) -> float | None:
        """Mask mAP@0.5 (box mAP for a box-only model) on ``dataset`` (what ``--val`` reports)."""
        from wsis_cli.metrics.coco_eval import evaluate

        results = self.predict_images(dataset.images, images_dir, dataset=dataset, score_thr=0.05)
        if not results:
            return 0.0
        value = evaluate(dataset, results, iou_thrs=(0.5,), pred_path="validation predictions")["mAP"][repr(0.5)]
        return None if value is None else round(float(value), 6)
