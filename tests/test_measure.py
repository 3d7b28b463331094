"""Lesion measurements: area, RECIST-style diameters in mm, intensity statistics."""

from __future__ import annotations

import numpy as np
import pytest

from lsms_core.measure import diameters, measure_mask


def test_rectangle_in_pixels():
    mask = np.zeros((40, 40), bool)
    mask[10:14, 5:25] = True  # 4 x 20 px
    longest, perpendicular = diameters(mask)
    assert longest == pytest.approx(np.hypot(4, 20))  # corner to corner
    assert perpendicular == pytest.approx(4 * 20 / np.hypot(4, 20), rel=0.15)


def test_disc_with_anisotropic_spacing_in_mm():
    rows, cols = np.mgrid[:101, :101]
    ellipse = ((rows - 50) / 40.0) ** 2 + ((cols - 50) / 20.0) ** 2 <= 1  # 80 x 40 px
    m = measure_mask(ellipse, spacing_mm=(0.5, 1.0))  # -> a 40 x 40 mm disc
    assert m.in_mm and m.components == 1
    assert m.area == pytest.approx(np.pi * 20 * 20, rel=0.03)
    assert m.longest == pytest.approx(41, abs=1.5)  # 40 mm + one pixel of corner extent
    assert m.perpendicular == pytest.approx(40, abs=2)


def test_largest_component_and_hu_statistics():
    mask = np.zeros((50, 50), bool)
    mask[5:25, 5:15] = True  # 20 x 10
    mask[40:43, 40:43] = True  # a small second lesion
    image = np.full((50, 50), 100.0)
    image[5:25, 5:15] = 40.0
    m = measure_mask(mask, None, image, hounsfield=True)
    assert not m.in_mm and m.components == 2 and m.pixels == 209
    assert m.longest == pytest.approx(np.hypot(20, 10))
    assert m.mean == pytest.approx((200 * 40 + 9 * 100) / 209)
    assert "largest of 2" in m.summary() and "HU" in m.summary()
    assert m.to_record()["longest_px"] == pytest.approx(22.361, abs=1e-3)


def test_empty_mask_is_no_finding():
    m = measure_mask(np.zeros((10, 10), bool), (0.7, 0.7))
    assert m.pixels == 0 and m.summary() == "no finding (empty mask)"


def test_single_pixel_and_line():
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    longest, perpendicular = diameters(one, (2.0, 2.0))
    assert longest == pytest.approx(np.hypot(2, 2))  # one 2 mm pixel, corner to corner
    assert 0 < perpendicular <= longest
    line = np.zeros((5, 20), bool)
    line[2, 3:13] = True
    longest, _ = diameters(line)
    assert longest == pytest.approx(np.hypot(1, 10))
