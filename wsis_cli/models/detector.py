"""torchvision Mask R-CNN / Faster R-CNN with FPN, a mask loss that skips box-only annotations,
and an optional mask-IoU branch (mask-guided sample selection, Sec. 4).

The IoU branch reads the mask head at two resolutions (its 14x14 features and the 28x28
up-sampled ones, each global-average-pooled, plus both pooled over the predicted mask), and a
two-layer MLP predicts ``t(IoU)`` of the predicted mask with the ground truth, where ``t`` is
the identity, the square root or the square (``iou_target``). Its inputs are detached: the IoU
loss never changes the segmentation network.

``build_detector(config, weights=...)`` rebuilds the same network from the dict that a run's
``config.json`` holds (see :func:`model_config`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

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
from wsis_cli.models import DETECTOR_BACKBONES, IOU_TARGETS

__all__ = ["DETECTOR_BACKBONES", "IOU_TARGETS", "IoUHead", "WsisRoIHeads", "model_config", "build_detector",
           "iou_forward", "iou_inverse"]

MASK_SIDE = 28  # the mask head's output side
BODY = "backbone.body."  # where the backbone's own weights sit in the detector's state dict
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
    instance that has a mask (``target["has_mask"]``), and with an optional IoU branch.

    Modes (``self.mode``): ``"seg"`` trains boxes and masks; ``"iou"`` computes only the IoU
    branch's L1 loss (everything else is frozen by the trainer).
    """

    iou_head: IoUHead | None
    iou_target: str
    mode: str

    def _mask_features(self, features, boxes, image_shapes):
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

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: C901 - torchvision's shape
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
            x, up, logits = self._mask_features(features, boxes, image_shapes)
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
            mask_props, mask_idx = [], []
            for i, t in enumerate(targets):
                pos = torch.where(labels[i] > 0)[0]
                pos = pos[t["has_mask"][matched_idxs[i][pos]]]
                mask_props.append(proposals[i][pos])
                mask_idx.append(matched_idxs[i][pos])
            x, up, logits = self._mask_features(features, mask_props, image_shapes)
            losses["loss_mask"] = maskrcnn_loss(logits, mask_props, [t["masks"] for t in targets],
                                                [t["labels"] for t in targets], mask_idx)
        elif self.iou_head is not None:
            losses["loss_iou"] = self._iou_loss(features, proposals, image_shapes, targets, class_logits, labels,
                                                matched_idxs)
        return result, losses

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
        x, up, logits = self._mask_features(feats, props, shapes)
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


# ----------------------------------------------------------------------------- building
def model_config(*, backbone: str, category_ids: list[int], category_names: list[str], min_size: int,
                 max_size: int, boxes_only: bool = False, iou_head: bool = False, iou_target: str = "sqrt",
                 fpn_channels: int = 256, head_channels: int = 1024, pretrained: bool = True) -> dict[str, Any]:
    """Everything :func:`build_detector` needs, as plain JSON. A ``pretrained`` backbone keeps
    torchvision's frozen batch norm and its first stages frozen; a random one trains everything
    with ordinary batch norm."""
    if backbone not in DETECTOR_BACKBONES:
        raise WsisError(f"--backbone must be one of {', '.join(DETECTOR_BACKBONES)}, got {backbone!r}")
    if iou_target not in IOU_TARGETS:
        raise WsisError(f"--iou-target must be one of {', '.join(IOU_TARGETS)}, got {iou_target!r}")
    if boxes_only and iou_head:
        raise WsisError("--iou-head needs a mask branch; it cannot go with --boxes-only")
    scale = min(1.0, min_size / 800.0)
    anchors = [max(4, int(round(s * scale))) for s in (32, 64, 128, 256, 512)]
    return {"architecture": "fasterrcnn" if boxes_only else "maskrcnn", "backbone": backbone,
            "num_classes": len(category_ids), "category_ids": [int(c) for c in category_ids],
            "category_names": [str(n) for n in category_names], "min_size": int(min_size), "max_size": int(max_size),
            "anchor_sizes": anchors, "fpn_channels": int(fpn_channels), "head_channels": int(head_channels),
            "iou_head": bool(iou_head), "iou_target": iou_target, "norm": "frozen" if pretrained else "batch",
            "trainable_layers": (3 if pretrained else 6) if backbone == "mobilenet_v3" else (3 if pretrained else 5)}


def _coco_url(config: dict) -> str:
    import torchvision.models.detection as det

    if config["backbone"] == "resnet50":
        enum = det.FasterRCNN_ResNet50_FPN_Weights if config["architecture"] == "fasterrcnn" else \
            det.MaskRCNN_ResNet50_FPN_Weights
        return enum.COCO_V1.url
    if config["backbone"] == "mobilenet_v3":
        return det.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1.url
    raise WsisError(f"--weights coco: torchvision has no COCO-trained {config['backbone']} detector; use "
                    "resnet50 or mobilenet_v3, or --weights imagenet|none|PATH")


def build_detector(config: dict, *, weights: str = "none") -> nn.Module:
    """The detector ``config`` describes, initialised by ``weights``: ``none`` (random), ``imagenet``
    (the backbone's ImageNet weights), ``coco`` (torchvision's COCO detector; class-specific layers
    are left random) or a file (a wsis run's checkpoint, a torchvision detection or backbone state
    dict: every tensor whose name and shape fit is loaded)."""
    import torchvision
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.misc import FrozenBatchNorm2d

    from wsis_cli.models.backbones import hub_state_dict, resolve_weights

    if weights not in ("coco",):
        resolve_weights(weights)
    norm = FrozenBatchNorm2d if config.get("norm", "frozen") == "frozen" else nn.BatchNorm2d
    trainable = int(config.get("trainable_layers", 3))
    name, fpn_ch = config["backbone"], int(config["fpn_channels"])
    if name == "mobilenet_v3":
        body = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm)
        backbone = _mobilenet_extractor(body, True, trainable)
        _fpn_width(backbone, fpn_ch)
        featmaps = ["0", "1"]
        imagenet_url = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url
    else:
        body = getattr(torchvision.models, name)(weights=None, norm_layer=norm)
        backbone = _resnet_fpn_extractor(body, trainable)  # the FPN itself has no norm, as torchvision's
        _fpn_width(backbone, fpn_ch)
        featmaps = ["0", "1", "2", "3"]
        imagenet_url = getattr(torchvision.models, {"resnet50": "ResNet50_Weights", "resnet18": "ResNet18_Weights"}[
            name]).IMAGENET1K_V1.url
    n_levels = len(featmaps) + 1
    anchors = tuple((int(s),) for s in config["anchor_sizes"][:n_levels]) if n_levels == 5 else \
        (tuple(int(s) for s in config["anchor_sizes"]),) * n_levels
    anchor_gen = AnchorGenerator(anchors, ((0.5, 1.0, 2.0),) * n_levels)
    k = int(config["num_classes"]) + 1
    head_ch = int(config["head_channels"])
    box_pool = MultiScaleRoIAlign(featmaps, 7, 2)
    common = dict(min_size=int(config["min_size"]), max_size=int(config["max_size"]), rpn_anchor_generator=anchor_gen,
                  box_roi_pool=box_pool, box_head=TwoMLPHead(fpn_ch * 49, head_ch),
                  box_predictor=FastRCNNPredictor(head_ch, k))
    if config["architecture"] == "fasterrcnn":
        model = FasterRCNN(backbone, **common)
    else:
        model = MaskRCNN(backbone, mask_roi_pool=MultiScaleRoIAlign(featmaps, 14, 2),
                         mask_head=MaskRCNNHeads(fpn_ch, (fpn_ch,) * 4, 1),
                         mask_predictor=MaskRCNNPredictor(fpn_ch, fpn_ch, k), **common)
    old = model.roi_heads
    heads = WsisRoIHeads.__new__(WsisRoIHeads)
    heads.__dict__ = old.__dict__
    heads.iou_head = IoUHead(fpn_ch) if config.get("iou_head") else None
    heads.iou_target = config.get("iou_target", "sqrt")
    heads.mode = "seg"
    model.roi_heads = heads

    if weights == "imagenet":
        sd = hub_state_dict(imagenet_url)
        if name == "mobilenet_v3":
            sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        _load_fitting(model, {BODY + k: v for k, v in sd.items()}, "imagenet", need=BODY)
    elif weights == "coco":
        _load_fitting(model, hub_state_dict(_coco_url(config), option="coco"), "coco", need="backbone.")
    elif weights != "none":
        from wsis_cli.models.backbones import _load_state_dict

        sd = _load_state_dict(weights)
        if not any(str(key).startswith((BODY, "backbone.fpn.")) for key in sd):
            # a backbone state dict: torchvision's classification model, or wsis's classifier (backbone.*)
            def body_key(k: str) -> str:
                k = k[len("backbone."):] if k.startswith("backbone.") else k
                return BODY + (k[len("features."):] if name == "mobilenet_v3" and k.startswith("features.") else k)

            sd = {body_key(k): v for k, v in sd.items() if isinstance(k, str)}
        _load_fitting(model, sd, weights, need=BODY)
    return model


def _fpn_width(backbone: nn.Module, channels: int) -> None:
    """Rebuild ``backbone``'s FPN (torchvision builds it 256 wide) at ``channels``."""
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    if channels != backbone.out_channels:
        in_list = [blk[0].in_channels for blk in backbone.fpn.inner_blocks]
        backbone.fpn = FeaturePyramidNetwork(in_list, channels, extra_blocks=LastLevelMaxPool())
        backbone.out_channels = channels


def _load_fitting(model: nn.Module, sd: dict, what: str, *, need: str) -> None:
    """Load the tensors of ``sd`` whose names and shapes fit ``model``; WsisError when none of the
    ``need``-prefixed (backbone) tensors do."""
    own = model.state_dict()
    fit = OrderedDict()
    for key, v in sd.items():
        if not isinstance(key, str) or not isinstance(v, torch.Tensor):
            continue
        key = key[len("module."):] if key.startswith("module.") else key
        if key in own and tuple(own[key].shape) == tuple(v.shape):
            fit[key] = v
    if not any(key.startswith(need) for key in fit):
        raise WsisError(f"--weights {what}: no tensor fits this model's backbone (other backbone or not a "
                        "detector / backbone state dict)")
    model.load_state_dict(fit, strict=False)
