"""torchvision Mask R-CNN / Faster R-CNN with FPN, put together from parts: a backbone from
:data:`BACKBONES` (a dict of keyword-only builders), torchvision's RPN and transform, and
:class:`~wsis_cli.models.roi_heads.WsisRoIHeads` (box-only annotations out of the mask loss, the
optional mask-IoU branch) passed in, as torchvision's own detectors are assembled.

``build_detector(config, weights=...)`` rebuilds the same network from the dict that a run's
``config.json`` holds (see :func:`model_config`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from wsis_cli.errors import WsisError
from wsis_cli.models import DETECTOR_BACKBONES, IOU_TARGETS
from wsis_cli.models.box_losses import BOX_LOSSES
from wsis_cli.models.necks import build_neck, check_neck
from wsis_cli.models.rcnn import WsisRCNN
from wsis_cli.models.roi_heads import IoUHead, WsisRoIHeads, iou_forward, iou_inverse
from wsis_cli.models.rpn import WsisRPN

__all__ = ["FORMAT", "VERSION", "DETECTOR_BACKBONES", "IOU_TARGETS", "BACKBONES", "Backbone", "model_config",
           "build_detector", "iou_forward", "iou_inverse"]

FORMAT = "wsis-maskrcnn"  # the checkpoint kind of a trained detector (engine/checkpoint.py)
VERSION = 1
BODY = "backbone.body."  # where the backbone's own weights sit in the detector's state dict
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- backbones
class Backbone(NamedTuple):
    """A feature pyramid: the module (``out_channels`` wide), the names of the maps the RoI heads
    pool from, and the URL of its body's ImageNet weights."""

    module: nn.Module
    featmaps: list[str]
    imagenet_url: str


def _resnet_fpn(*, name: str, norm: type[nn.Module], trainable: int, channels: int, neck: str = "fpn") -> Backbone:
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    body = getattr(torchvision.models, name)(weights=None, norm_layer=norm)
    module = _resnet_fpn_extractor(body, trainable)  # the FPN itself has no norm, as torchvision's
    _fpn_width(module, channels, neck=neck, strides=(4, 8, 16, 32))
    enum = {"resnet50": torchvision.models.ResNet50_Weights, "resnet18": torchvision.models.ResNet18_Weights}[name]
    return Backbone(module, ["0", "1", "2", "3"], enum.IMAGENET1K_V1.url)


def _mobilenet_fpn(*, name: str, norm: type[nn.Module], trainable: int, channels: int, neck: str = "fpn") -> Backbone:
    import torchvision
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    body = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm)
    module = _mobilenet_extractor(body, True, trainable)
    _fpn_width(module, channels, neck=neck, strides=(32, 32))  # its FPN reads two stride-32 maps
    return Backbone(module, ["0", "1"], torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url)


BACKBONES: dict[str, Callable[..., Backbone]] = {"resnet50": _resnet_fpn, "resnet18": _resnet_fpn,
                                                 "mobilenet_v3": _mobilenet_fpn}
assert tuple(BACKBONES) == DETECTOR_BACKBONES


# ----------------------------------------------------------------------------- building
def model_config(*, backbone: str, category_ids: list[int], category_names: list[str], min_size: int,
                 max_size: int, boxes_only: bool = False, iou_head: bool = False, iou_target: str = "sqrt",
                 fpn_channels: int = 256, head_channels: int = 1024, pretrained: bool = True,
                 neck: str = "fpn", box_loss: str = "none") -> dict[str, Any]:
    """Everything :func:`build_detector` needs, as plain JSON. A ``pretrained`` backbone keeps
    torchvision's frozen batch norm and its first stages frozen; a random one trains everything
    with ordinary batch norm."""
    if backbone not in DETECTOR_BACKBONES:
        raise WsisError(f"--backbone must be one of {', '.join(DETECTOR_BACKBONES)}, got {backbone!r}")
    if iou_target not in IOU_TARGETS:
        raise WsisError(f"--iou-target must be one of {', '.join(IOU_TARGETS)}, got {iou_target!r}")
    if boxes_only and iou_head:
        raise WsisError("--iou-head needs a mask branch; it cannot go with --boxes-only")
    if box_loss not in BOX_LOSSES or (boxes_only and box_loss != "none"):
        raise WsisError(f"--box-loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}" if box_loss not in
                        BOX_LOSSES else f"--box-loss {box_loss} trains the mask head; it cannot go with --boxes-only")
    scale = min(1.0, min_size / 800.0)
    anchors = [max(4, int(round(s * scale))) for s in (32, 64, 128, 256, 512)]
    return {"architecture": "fasterrcnn" if boxes_only else "maskrcnn", "backbone": backbone,
            "num_classes": len(category_ids), "category_ids": [int(c) for c in category_ids],
            "category_names": [str(n) for n in category_names], "min_size": int(min_size), "max_size": int(max_size),
            "anchor_sizes": anchors, "fpn_channels": int(fpn_channels), "head_channels": int(head_channels),
            "iou_head": bool(iou_head), "iou_target": iou_target, "norm": "frozen" if pretrained else "batch",
            "trainable_layers": (3 if pretrained else 6) if backbone == "mobilenet_v3" else (3 if pretrained else 5),
            "neck": check_neck(neck),  # fpn | efpn (models/necks.py); a config without it is fpn
            "box_loss": box_loss}  # none | boxinst (models/box_losses.py); a config without it is none


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


def _rpn(channels: int, anchor_sizes: list[int], n_levels: int) -> nn.Module:
    """torchvision's region proposal network with its FasterRCNN defaults, one anchor size per
    pyramid level (or all sizes on each level of a short pyramid)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead

    anchors = tuple((int(s),) for s in anchor_sizes[:n_levels]) if n_levels == 5 else \
        (tuple(int(s) for s in anchor_sizes),) * n_levels
    generator = AnchorGenerator(anchors, ((0.5, 1.0, 2.0),) * n_levels)
    head = RPNHead(channels, generator.num_anchors_per_location()[0])
    return WsisRPN(generator, head, 0.7, 0.3, 256, 0.5, dict(training=2000, testing=1000),
                   dict(training=2000, testing=1000), 0.7, score_thresh=0.0)  # ignore regions: models/rpn.py


def _roi_heads(config: dict, channels: int, featmaps: list[str]) -> tuple[dict, Callable[[], WsisRoIHeads]]:
    """The box (and mask) components, made now, and a maker of the heads that hold them (the IoU
    branch is made last, after the RPN, so a seed gives the weights it always gave)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    k = int(config["num_classes"]) + 1
    head_ch = int(config["head_channels"])
    parts: dict[str, Any] = {"box_roi_pool": MultiScaleRoIAlign(featmaps, 7, 2),
                             "box_head": TwoMLPHead(channels * 49, head_ch),
                             "box_predictor": FastRCNNPredictor(head_ch, k)}
    if config["architecture"] == "maskrcnn":
        parts.update(mask_roi_pool=MultiScaleRoIAlign(featmaps, 14, 2),
                     mask_head=MaskRCNNHeads(channels, (channels,) * 4, 1),
                     mask_predictor=MaskRCNNPredictor(channels, channels, k))

    def make() -> WsisRoIHeads:
        iou_head = IoUHead(channels) if config.get("iou_head") else None
        return WsisRoIHeads(**parts, iou_head=iou_head, iou_target=config.get("iou_target", "sqrt"),
                            box_loss=config.get("box_loss", "none"))  # config.json before --box-loss: none

    return parts, make


def build_detector(config: dict, *, weights: str = "none") -> nn.Module:
    """The detector ``config`` describes, initialised by ``weights``: ``none`` (random), ``imagenet``
    (the backbone's ImageNet weights), ``coco`` (torchvision's COCO detector; class-specific layers
    are left random) or a file (a wsis run's checkpoint, a torchvision detection or backbone state
    dict: every tensor whose name and shape fit is loaded)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops.misc import FrozenBatchNorm2d

    from wsis_cli.models.backbones import resolve_weights

    if weights != "coco":
        resolve_weights(weights)
    norm = FrozenBatchNorm2d if config.get("norm", "frozen") == "frozen" else nn.BatchNorm2d
    channels = int(config["fpn_channels"])
    backbone = BACKBONES[config["backbone"]](name=config["backbone"], norm=norm,
                                             trainable=int(config.get("trainable_layers", 3)), channels=channels,
                                             neck=config.get("neck", "fpn"))  # config.json before --neck: fpn
    _, make_heads = _roi_heads(config, channels, backbone.featmaps)
    rpn = _rpn(channels, config["anchor_sizes"], len(backbone.featmaps) + 1)
    transform = GeneralizedRCNNTransform(int(config["min_size"]), int(config["max_size"]), list(IMAGENET_MEAN),
                                         list(IMAGENET_STD))
    model = WsisRCNN(backbone.module, rpn, make_heads(), transform)  # GeneralizedRCNN + ignore boxes, images
    _init_weights(model, config, weights, backbone.imagenet_url)
    return model


def _init_weights(model: nn.Module, config: dict, weights: str, imagenet_url: str) -> None:
    from wsis_cli.models.backbones import hub_state_dict, load_state_dict

    name = config["backbone"]
    if weights == "imagenet":
        sd = hub_state_dict(imagenet_url)
        if name == "mobilenet_v3":
            sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        _load_fitting(model, {BODY + k: v for k, v in sd.items()}, "imagenet", need=BODY)
    elif weights == "coco":
        _load_fitting(model, hub_state_dict(_coco_url(config), option="coco"), "coco", need="backbone.")
    elif weights != "none":
        sd = load_state_dict(weights)
        if not any(str(key).startswith((BODY, "backbone.fpn.")) for key in sd):
            # a backbone state dict: torchvision's classification model, or wsis's classifier (backbone.*)
            def body_key(k: str) -> str:
                k = k[len("backbone."):] if k.startswith("backbone.") else k
                return BODY + (k[len("features."):] if name == "mobilenet_v3" and k.startswith("features.") else k)

            sd = {body_key(k): v for k, v in sd.items() if isinstance(k, str)}
        _load_fitting(model, sd, weights, need=BODY)


def _fpn_width(backbone: nn.Module, channels: int, *, neck: str = "fpn", strides: tuple[int, ...] = ()) -> None:
    """Rebuild ``backbone``'s FPN (torchvision builds it 256 wide) at ``channels``, or put the
    ``neck`` (:mod:`wsis_cli.models.necks`; its backbone maps at ``strides``) in its place. A 256-wide
    ``fpn`` keeps torchvision's own, so a seed gives the weights it always gave."""
    if channels != backbone.out_channels or neck != "fpn":
        in_list = [blk[0].in_channels for blk in backbone.fpn.inner_blocks]
        backbone.fpn = build_neck(neck, in_channels=in_list, channels=channels, strides=strides)
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
