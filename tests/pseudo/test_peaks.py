import numpy as np
import pytest

from wsis_cli.pseudo.peaks import find_peaks, subpixel


def blob(h, w, cy, cx, s, amp=1.0):
    yy, xx = np.mgrid[0:h, 0:w]
    return amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))


def test_peaks_at_the_blobs_strongest_first():
    m = blob(20, 30, 5, 6, 2, 1.0) + blob(20, 30, 14, 22, 2, 2.0)
    rc, v = find_peaks(m)
    assert rc.tolist()[:2] == [[14, 22], [5, 6]]
    assert v[0] > v[1]


def test_constant_and_empty_maps_have_no_peaks():
    for m in (np.ones((5, 5)), np.zeros((0, 0))):
        rc, v = find_peaks(m)
        assert rc.shape == (0, 2) and v.shape == (0,)


def test_values_at_or_below_median_are_not_peaks():
    m = np.zeros((6, 6))
    m[1, 1] = 1.0  # the only value above the median (0)
    rc, _ = find_peaks(m)
    assert rc.tolist() == [[1, 1]]


def test_plateau_gives_one_peak_and_kernel_matters():
    m = np.zeros((7, 9))
    m[3, 2:4] = 5.0  # a two-pixel plateau
    m[3, 6] = 4.0  # two columns away from the plateau
    rc3, _ = find_peaks(m, kernel=3)
    assert rc3.tolist() == [[3, 2], [3, 6]]
    rc7, _ = find_peaks(m, kernel=7)
    assert rc7.tolist() == [[3, 2]]


def test_rejects_non_2d():
    with pytest.raises(ValueError):
        find_peaks(np.zeros((2, 2, 2)))


def test_subpixel_moves_towards_the_heavier_neighbour():
    m = np.zeros((5, 5))
    m[2, 2], m[2, 3] = 2.0, 1.0
    xy = subpixel(m, np.array([[2, 2]]))
    assert xy[0, 0] == pytest.approx((2.5 * 2 + 3.5 * 1) / 3) and xy[0, 1] == pytest.approx(2.5)
