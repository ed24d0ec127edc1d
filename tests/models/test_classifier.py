"""The peak-stimulated classifier: peaks, peak stimulation, its input tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsis_cli.engine.train_classifier import image_tensor
from wsis_cli.models.classifier import peak_mask, peak_stimulation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(backbone="resnet18", weights="none", size=64, batch_size=4, lr=0.01, seed=3)


def test_peak_mask_and_stimulation_on_a_hand_made_map():
    crm = torch.zeros(1, 1, 4, 4)
    crm[0, 0, 1, 1] = 5.0
    crm[0, 0, 2, 3] = 3.0
    peaks = peak_mask(crm)
    assert peaks.dtype == torch.bool and peaks.shape == (1, 1, 4, 4)
    assert sorted(map(tuple, peaks[0, 0].nonzero().tolist())) == [(1, 1), (2, 3)]
    crm.requires_grad_(True)
    score = peak_stimulation(crm)
    assert score.shape == (1, 1) and score.item() == pytest.approx(4.0)  # mean of the two peaks
    score.sum().backward()
    expect = torch.zeros(4, 4)
    expect[1, 1] = expect[2, 3] = 0.5
    assert torch.equal(crm.grad[0, 0], expect)  # the gradient reaches the peaks only


def test_peaks_of_a_plateau_negative_values_and_a_constant_map():
    crm = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]],      # a plateau: both tied maxima are peaks
                         [[-3.0, -1.0], [-2.0, -4.0]],  # all negative: one peak, above the median
                         [[2.0, 2.0], [2.0, 2.0]]]])     # constant: nothing above the median
    peaks = peak_mask(crm)
    assert peaks[0, 0].tolist() == [[True, True], [False, False]]
    assert peaks[0, 1].tolist() == [[False, True], [False, False]]
    assert not peaks[0, 2].any()
    crm.requires_grad_(True)
    scores = peak_stimulation(crm)
    assert scores.tolist() == [[1.0, -1.0, 2.0]]  # a constant map scores its mean
    scores[0, 2].backward()
    assert torch.allclose(crm.grad[0, 2], torch.full((2, 2), 0.25))


def test_peak_kernel_widens_the_window():
    crm = torch.zeros(1, 1, 1, 7)
    crm[0, 0, 0, 1], crm[0, 0, 0, 3] = 2.0, 1.0
    assert peak_mask(crm, 3)[0, 0, 0].nonzero().flatten().tolist() == [1, 3]
    assert peak_mask(crm, 5)[0, 0, 0].nonzero().flatten().tolist() == [1]  # 3 is in 1's 5-window


# ----------------------------------------------------------------------------- images, labels, augmentation


def test_image_tensor():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    rgb[..., 2] = 51
    x = image_tensor(rgb, 8)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(8, 8)) and torch.allclose(x[1], torch.zeros(8, 8))
    assert torch.allclose(x[2], torch.full((8, 8), 0.2))
    same = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    assert torch.equal(image_tensor(same, 2), torch.from_numpy(same).permute(2, 0, 1).float() / 255)
    big = np.full((64, 32, 3), 200, dtype=np.uint8)
    assert torch.allclose(image_tensor(big, 16), torch.full((3, 16, 16), 200 / 255))
