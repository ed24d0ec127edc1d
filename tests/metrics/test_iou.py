"""Mask IoU matrices."""

from __future__ import annotations

import numpy as np
from conftest import rect_mask

from wsis_cli.metrics import mask_iou


def test_mask_iou():
    a = np.stack([rect_mask(4, 4, 0, 0, 2, 2), np.zeros((4, 4), bool)])
    b = np.stack([rect_mask(4, 4, 0, 0, 4, 2), np.zeros((4, 4), bool)])
    np.testing.assert_allclose(mask_iou(a, b), [[0.5, 0.0], [0.0, 0.0]])
