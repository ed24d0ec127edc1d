"""Metrics: mAP^r, COCO AP, AP_S/AP_L at 64×64 px, ABO, per-class AP (see coco_eval)."""

from wsis_cli.metrics.coco_eval import ENGINES, SMALL_AREA, default_engine, evaluate
from wsis_cli.metrics.iou import mask_iou

__all__ = ["evaluate", "default_engine", "ENGINES", "mask_iou", "SMALL_AREA"]
