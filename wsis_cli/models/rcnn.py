"""The detector's top: torchvision's GeneralizedRCNN (transform, backbone, RPN, RoI heads), with
two things more in training that the transform alone cannot carry:

- the ignore boxes of each target (``target["ignore"]``, FloatTensor[M, 4], x1, y1, x2, y2 in the
  input image) are scaled with the image, as the transform scales ``target["boxes"]``, for the RPN
  and the RoI heads (:mod:`wsis_cli.models.rpn`);
- RoI heads that ask for the image (``roi_heads.wants_images``: BoxInst's pairwise term compares
  colours in each proposal's frame) get the transformed batch back in RGB 0..1 (the transform's
  normalisation undone), as ``images=`` FloatTensor[B, 3, H, W].

Why a subclass here rather than in the heads: the RoI heads only see features, and the transformed
image (scaled, padded into a batch) exists only inside this forward; handing it over explicitly
keeps the heads free of hidden state and leaves inference exactly torchvision's. The subclass adds
no parameters, so every checkpoint of a plain GeneralizedRCNN loads into it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import resize_boxes

__all__ = ["WsisRCNN"]


class WsisRCNN(GeneralizedRCNN):
    """GeneralizedRCNN(backbone, rpn, roi_heads, transform); see the module docstring."""

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        """Inference: torchvision's. Training: ``images`` (FloatTensor[3, H_i, W_i] in 0..1) and
        ``targets`` (``boxes``, ``labels``, optional ``masks``, ``has_mask``, ``ignore``) -> the loss dict."""
        if not self.training:
            return super().forward(images, targets)
        if targets is None:
            raise ValueError("targets should not be None in training mode")
        sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        for t, before, after in zip(targets, sizes, batch.image_sizes):
            if "ignore" in t:
                t["ignore"] = resize_boxes(t["ignore"], before, after)
        for k, t in enumerate(targets):
            boxes = t["boxes"]
            if (boxes[:, 2:] <= boxes[:, :2]).any():
                raise ValueError(f"target {k} holds a box of no width or height: {boxes.tolist()}")
        features = self.backbone(batch.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, proposal_losses = self.rpn(batch, features, targets)
        extra = {"images": self._rgb(batch.tensors)} if getattr(self.roi_heads, "wants_images", False) else {}
        _, losses = self.roi_heads(features, proposals, batch.image_sizes, targets, **extra)
        losses.update(proposal_losses)
        return losses

    def _rgb(self, tensors: torch.Tensor) -> torch.Tensor:
        """The transform's normalisation undone: RGB in 0..1 (the padding becomes the mean colour)."""
        mean = torch.as_tensor(self.transform.image_mean, dtype=tensors.dtype, device=tensors.device)
        std = torch.as_tensor(self.transform.image_std, dtype=tensors.dtype, device=tensors.device)
        return tensors * std[:, None, None] + mean[:, None, None]
