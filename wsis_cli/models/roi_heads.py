"""The detector's RoI heads: torchvision's, with a mask loss that skips box-only annotations (or,
``box_loss="boxinst"``, trains on them with BoxInst's box terms), ignore regions, and an optional
mask-IoU branch (mask-guided sample selection, Sec. 4).

Box-only annotations: with ``box_loss="none"`` proposals matched to them train the box branch
only; with ``"boxinst"`` they also train the mask head by BoxInst's projection and pairwise terms
(:mod:`wsis_cli.models.box_losses`), computed in each positive proposal's 28x28 frame, while
proposals matched to annotations with masks keep Mask R-CNN's ordinary mask loss. The pairwise
term's warm-up counts training iterations in a buffer, so a resumed run continues the ramp.

Ignore regions (``target["ignore"]``): a proposal the matcher made background is left out of
sampling (label -1) when most of it lies inside an ignore box; the rule is
:func:`wsis_cli.models.rpn.ignored`'s, the RPN's.

The IoU branch reads the mask head at two resolutions (its 14x14 features and the 28x28
up-sampled ones, each global-average-pooled, plus both pooled over the predicted mask), and a
two-layer MLP predicts ``t(IoU)`` of the predicted mask with the ground truth, where ``t`` is
the identity, the square root or the square (``iou_target``). Its inputs are detached: the IoU
loss never changes the segmentation network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
    project_masks_on_boxes,
)

from wsis_cli.errors import WsisError
from wsis_cli.models.box_losses import (BOX_LOSSES, PAIRWISE_WARMUP, pairwise_loss, pairwise_weight, projection_loss,
                                        rasterise_boxes, roi_lab)
from wsis_cli.models.rpn import ignored

__all__ = ["IoUHead", "WsisRoIHeads", "iou_forward", "iou_inverse", "MASK_SIDE"]

MASK_SIDE = 28  # the mask head's output side
IOU_NEGATIVES = 1  # background proposals per foreground one that train the IoU branch


def iou_forward(iou: torch.Tensor, target: str) -> torch.Tensor:
    """What the IoU branch regresses: ``t(IoU)``."""
    return iou.sqrt() if target == "sqrt" else iou.square() if target == "square" else iou


def iou_inverse(t: torch.Tensor, target: str) -> torch.Tensor:
    """The IoU for a regressed ``t(IoU)``."""
    t = t.clamp(0.0, 1.0)
    return t.square() if target == "sqrt" else t.sqrt() if target == "square" else t


class IoUHead(nn.Module):
    """Predicted mask IoU from the mask head's features (values in 0..1, in ``t`` space), with the
    box head's probability of the class as one more input: a detection the box head doubts is
    often a false one, whose mask IoU is 0."""

    def __init__(self, channels: int, hidden: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(4 * channels + 3, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, feat14: torch.Tensor, feat28: torch.Tensor, prob: torch.Tensor,
                score: torch.Tensor) -> torch.Tensor:
        """``feat14`` (N, C, 14, 14), ``feat28`` (N, C, 28, 28), ``prob`` (N, 28, 28) the predicted
        class's mask probability, ``score`` (N,) the box head's probability of that class;
        returns (N,)."""
        p28 = prob.unsqueeze(1)
        p14 = F.adaptive_avg_pool2d(p28, feat14.shape[-2:])
        hard = (prob > 0.5).float()
        area28 = p28.sum((2, 3)).clamp_min(1e-6)
        area14 = p14.sum((2, 3)).clamp_min(1e-6)
        x = torch.cat([feat14.mean((2, 3)), feat28.mean((2, 3)),
                       (feat14 * p14).sum((2, 3)) / area14, (feat28 * p28).sum((2, 3)) / area28,
                       prob.mean((1, 2)).unsqueeze(1), hard.mean((1, 2)).unsqueeze(1), score.unsqueeze(1)], dim=1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x)))).squeeze(1)


class WsisRoIHeads(RoIHeads):
    """RoIHeads without keypoints, whose mask loss only uses proposals matched to a ground-truth
    instance that has a mask (``target["has_mask"]``) or, with ``box_loss="boxinst"``, trains the
    box-only ones by BoxInst's terms; with ignore regions and an optional IoU branch (see the
    module docstring).

    Modes (``self.mode``): ``"seg"`` trains boxes and masks; ``"iou"`` computes only the IoU
    branch's L1 loss (everything else is frozen by the trainer).
    """

    def __init__(self, *, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 mask_roi_pool: nn.Module | None = None, mask_head: nn.Module | None = None,
                 mask_predictor: nn.Module | None = None, iou_head: IoUHead | None = None, iou_target: str = "sqrt",
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, box_loss: str = "none"):
        """torchvision's RoIHeads with its defaults (as FasterRCNN / MaskRCNN build them), the
        mask components for a Mask R-CNN (None for a box-only detector), the IoU branch and what
        trains the mask head on box-only annotations (``box_loss``: ``none`` or ``boxinst``)."""
        super().__init__(box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                         positive_fraction, None, score_thresh, nms_thresh, detections_per_img,
                         mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor)
        if box_loss not in BOX_LOSSES:
            raise WsisError(f"--box-loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}")
        if box_loss != "none" and mask_predictor is None:
            raise WsisError(f"--box-loss {box_loss} trains the mask head; a box-only detector has none")
        self.iou_head = iou_head
        self.iou_target = iou_target
        self.box_loss = box_loss
        self.mode = "seg"
        self.pairwise_warmup = PAIRWISE_WARMUP  # the trainer sets it to a share of its run
        if box_loss == "boxinst":  # training iterations so far: the pairwise term's warm-up (saved, so resumable)
            self.register_buffer("boxinst_iter", torch.zeros((), dtype=torch.int64))

    @property
    def wants_images(self) -> bool:
        """Whether training needs the image batch (``forward(..., images=)``): BoxInst's colours."""
        return self.box_loss == "boxinst"

    def select_training_samples(self, proposals, targets):
        """torchvision's sampling (ground-truth boxes added to the proposals, matched, a fixed share
        of foreground sampled), except that background proposals inside an ignore box are not
        sampled (:func:`wsis_cli.models.rpn.ignored`). Returns the sampled proposals, their matched
        ground-truth indices, labels (0: background) and box regression targets."""
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, [t["labels"] for t in targets])
        for lab, props, t in zip(labels, proposals, targets):
            lab[(lab == 0) & ignored(props, t)] = -1
        sampled = self.subsample(labels)
        matched_boxes = []
        for i, inds in enumerate(sampled):
            proposals[i], labels[i], matched_idxs[i] = proposals[i][inds], labels[i][inds], matched_idxs[i][inds]
            gt = gt_boxes[i] if gt_boxes[i].numel() else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_boxes.append(gt[matched_idxs[i]])
        return proposals, matched_idxs, labels, self.box_coder.encode(matched_boxes, proposals)

    def mask_features(self, features, boxes: list[torch.Tensor], image_shapes):
        """The mask head on ``boxes`` (one FloatTensor[N_i, 4] per image, x1, y1, x2, y2 in the
        transformed images): its 14x14 features, the 28x28 up-sampled ones and the mask logits
        (N, K+1, 28, 28)."""
        x = self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))
        up = self.mask_predictor.relu(self.mask_predictor.conv5_mask(x))
        return x, up, self.mask_predictor.mask_fcn_logits(up)

    def _class_probs(self, logits: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
        lab = torch.cat(labels) if labels else logits.new_zeros(0, dtype=torch.int64)
        return logits[torch.arange(len(lab), device=logits.device), lab].sigmoid()

    def predict_ious(self, x, up, logits, labels: list[torch.Tensor], scores: list[torch.Tensor]) -> torch.Tensor:
        prob = self._class_probs(logits, labels)
        t = self.iou_head(x.detach(), up.detach(), prob.detach(), torch.cat(scores).detach().to(prob.dtype))
        return iou_inverse(t, self.iou_target)

    def segment_boxes(self, features, boxes: torch.Tensor, labels: torch.Tensor, image_sizes):
        """Masks for given boxes of one image (FloatTensor[N, 4], x1, y1, x2, y2 in the transformed
        image) and classes (Int64Tensor[N], 1..K): ``(mask probabilities FloatTensor[N, 1, 28, 28],
        the box head's probability of each class FloatTensor[N], predicted IoUs FloatTensor[N] or
        None without the IoU branch)``."""
        logits, _ = self.box_predictor(self.box_head(self.box_roi_pool(features, [boxes], image_sizes)))
        scores = torch.softmax(logits, -1)[torch.arange(len(labels), device=labels.device), labels]
        x, up, mlogits = self.mask_features(features, [boxes], image_sizes)
        probs = maskrcnn_inference(mlogits, [labels])[0]
        ious = self.predict_ious(x, up, mlogits, [labels], [scores]) if self.iou_head is not None else None
        return probs, scores, ious

    def forward(self, features, proposals, image_shapes, targets=None, images=None):  # noqa: C901 - torchvision's
        """torchvision's RoIHeads.forward; ``images`` (FloatTensor[B, 3, H, W], the transformed batch in
        RGB 0..1) is needed in training when :attr:`wants_images`."""
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        result: list[dict[str, torch.Tensor]] = []
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            if self.mode == "seg":
                losses["loss_classifier"], losses["loss_box_reg"] = fastrcnn_loss(
                    class_logits, box_regression, labels, regression_targets)
        else:
            boxes, scores, lbls = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            result = [{"boxes": b, "labels": lab, "scores": s} for b, lab, s in zip(boxes, lbls, scores)]
        if not self.has_mask():
            return result, losses

        if not self.training:
            boxes = [r["boxes"] for r in result]
            x, up, logits = self.mask_features(features, boxes, image_shapes)
            lbls = [r["labels"] for r in result]
            probs = maskrcnn_inference(logits, lbls)
            ious = self.predict_ious(x, up, logits, lbls, [r["scores"] for r in result]).split(
                [len(b) for b in boxes]) \
                if self.iou_head is not None else None
            for i, r in enumerate(result):
                r["masks"] = probs[i]
                if ious is not None:
                    r["iou"] = ious[i]
            return result, losses

        if self.mode == "seg":
            losses.update(self._mask_losses(features, proposals, image_shapes, targets, labels, matched_idxs, images))
        elif self.iou_head is not None:
            losses["loss_iou"] = self._iou_loss(features, proposals, image_shapes, targets, class_logits, labels,
                                                matched_idxs)
        return result, losses

    def _mask_losses(self, features, proposals, image_shapes, targets, labels, matched_idxs, images):
        """The mask head's training losses on the sampled positive proposals: ``loss_mask`` (Mask
        R-CNN's, on those matched to an instance with a mask) and, with BoxInst, ``loss_projection``
        and ``loss_pairwise`` (the latter times its warm-up weight) on those matched to a box-only one."""
        boxinst = self.box_loss == "boxinst"
        props, idx, has = [], [], []
        for i, t in enumerate(targets):
            pos = torch.where(labels[i] > 0)[0]
            masked = t["has_mask"][matched_idxs[i][pos]]
            if not boxinst:
                pos, masked = pos[masked], masked[masked]
            props.append(proposals[i][pos])
            idx.append(matched_idxs[i][pos])
            has.append(masked)
        _, _, logits = self.mask_features(features, props, image_shapes)
        gt_masks, gt_labels = [t["masks"] for t in targets], [t["labels"] for t in targets]
        if not boxinst:
            return {"loss_mask": maskrcnn_loss(logits, props, gt_masks, gt_labels, idx)}
        keep = torch.cat(has)
        losses = {"loss_mask": maskrcnn_loss(logits[keep], [p[m] for p, m in zip(props, has)], gt_masks, gt_labels,
                                             [j[m] for j, m in zip(idx, has)])}
        box_props = [p[~m] for p, m in zip(props, has)]
        box_idx = [j[~m] for j, m in zip(idx, has)]
        losses.update(self._boxinst_losses(logits[~keep], box_props, box_idx, targets, images))
        return losses

    def _boxinst_losses(self, logits, props, idx, targets, images):
        """BoxInst's terms for the positive proposals ``props`` (one FloatTensor[N_i, 4] per image)
        matched to box-only instances ``idx``; ``logits`` (FloatTensor[N, K+1, 28, 28]) are theirs."""
        if images is None:
            raise ValueError("box_loss='boxinst' needs the image batch (forward(..., images=)); build the "
                             "detector with wsis_cli.models.detector.build_detector")
        self.boxinst_iter += 1
        lab = torch.cat([t["labels"][j] for t, j in zip(targets, idx)])
        own = logits[torch.arange(len(lab), device=logits.device), lab]
        rois = torch.cat(props) if props else logits.new_zeros((0, 4))
        gt = torch.cat([t["boxes"][j] for t, j in zip(targets, idx)]).to(rois.dtype)
        box_masks = rasterise_boxes(gt, rois, MASK_SIDE)
        colours = roi_lab(images, props, MASK_SIDE)
        weight = pairwise_weight(int(self.boxinst_iter), self.pairwise_warmup)
        return {"loss_projection": projection_loss(own, box_masks),
                "loss_pairwise": pairwise_loss(own, colours, box_masks) * weight}

    def _iou_loss(self, features, proposals, image_shapes, targets, class_logits, labels, matched_idxs):
        """L1 loss of the IoU branch on the sampled proposals, read as inference reads detections:
        the mask channel of the class the box head predicts, and its probability. The target of a
        foreground proposal is that mask's IoU with its ground truth when the class is right, else
        0; a background proposal's is 0. All foreground
        proposals and as many background ones are used (background proposals are what false
        detections look like), and the two groups weigh half each in the loss, so the mostly-zero
        background targets do not pull every prediction to 0 (an L1 fit goes to the median).
        Proposals matched to box-only instances have no target."""
        probs = torch.softmax(class_logits.detach().float(), -1)
        top = probs[:, 1:].argmax(1) + 1
        sizes = [len(p) for p in proposals]
        pred_cls, pred_score = top.split(sizes), probs[torch.arange(len(top), device=top.device), top].split(sizes)
        props, cls, idx, right, areas, is_fg, scores = [], [], [], [], [], [], []
        for i, t in enumerate(targets):
            fg = labels[i] > 0
            pos, neg = torch.where(fg)[0], torch.where(~fg)[0]
            keep_neg = max(IOU_NEGATIVES * len(pos), IOU_NEGATIVES)
            neg = neg[torch.randperm(len(neg), device=neg.device)[:keep_neg]]
            sel = torch.cat([pos, neg])
            fg_sel = torch.cat([torch.ones_like(pos, dtype=torch.bool), torch.zeros_like(neg, dtype=torch.bool)])
            gt = matched_idxs[i][sel]  # background proposals hold index 0 here (torchvision clamps them)
            if len(t["labels"]) == 0:
                continue
            known = t["has_mask"][gt] | ~fg_sel  # a background proposal's target is 0 whatever is near it
            sel, gt, fg_sel = sel[known], gt[known], fg_sel[known]
            is_fg.append(fg_sel)
            props.append(proposals[i][sel])
            cls.append(pred_cls[i][sel])
            scores.append(pred_score[i][sel])
            idx.append(gt)
            right.append((pred_cls[i][sel] == t["labels"][gt]) & fg_sel)
            areas.append(t["masks"].flatten(1).sum(1).float()[gt])
        if not props or sum(len(p) for p in props) == 0:
            return sum(p.sum() for p in self.iou_head.parameters()) * 0.0
        keep_images = [k for k, t in enumerate(targets) if len(t["labels"])]
        shapes = [image_shapes[k] for k in keep_images]
        feats = {k: v[keep_images] for k, v in features.items()}
        x, up, logits = self.mask_features(feats, props, shapes)
        with torch.no_grad():
            gms = [targets[k]["masks"] for k in keep_images]
            real = _mask_ious(logits, props, cls, gms, idx, areas) * torch.cat(right).float()
        prob = self._class_probs(logits, cls)
        pred = self.iou_head(x.detach(), up.detach(), prob.detach(), torch.cat(scores).to(prob.dtype))
        err = (pred - iou_forward(real, self.iou_target)).abs()
        fg = torch.cat(is_fg)
        if fg.all() or not fg.any():
            return err.mean()
        return 0.5 * err[fg].mean() + 0.5 * err[~fg].mean()


def _mask_ious(logits, proposals, labels, gt_masks, matched, gt_areas) -> torch.Tensor:
    """IoU of each positive proposal's predicted mask (its class channel > 0, pasted in its box)
    with the full ground-truth mask it is matched to: intersection and predicted area are counted
    in the 28x28 box frame and scaled to pixels, the ground truth's area is its whole mask's."""
    out = []
    for props, lab, gm, idx, area in zip(proposals, labels, gt_masks, matched, gt_areas):
        if len(props) == 0:
            continue
        target = project_masks_on_boxes(gm, props, idx, MASK_SIDE) >= 0.5
        out.append((props, lab, target, area))
    if not out:
        return logits.new_zeros(0)
    props = torch.cat([o[0] for o in out])
    lab = torch.cat([o[1] for o in out])
    target = torch.cat([o[2] for o in out])
    area = torch.cat([o[3] for o in out])
    pred = logits[torch.arange(len(lab), device=logits.device), lab] > 0
    cell = ((props[:, 2] - props[:, 0]) * (props[:, 3] - props[:, 1])).clamp_min(1e-6) / MASK_SIDE**2
    inter = (pred & target).flatten(1).sum(1).float() * cell
    union = pred.flatten(1).sum(1).float() * cell + area - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-6), torch.zeros_like(union)).clamp(0.0, 1.0)
