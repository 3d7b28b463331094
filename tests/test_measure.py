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


def test_each_connected_part_is_measured_and_the_total_covers_them_all():
    """Issue 11: the area counted every part of the mask while the diameters were of the largest part only;
    now each part has its own area and diameters, and the total is said as such."""
    from lsms_core.measure import MAX_MEASURED_PARTS

    mask = np.zeros((60, 60), bool)
    mask[5:25, 5:15] = True  # 20 x 10 px
    mask[40:43, 40:46] = True  # 3 x 6 px, a second lesion
    image = np.full((60, 60), 30.0)
    m = measure_mask(mask, (0.5, 0.5), image, hounsfield=True)
    assert [p.pixels for p in m.parts] == [200, 18] and m.pixels == 218
    assert [p.area for p in m.parts] == pytest.approx([50.0, 4.5]) and m.area == pytest.approx(54.5)
    assert m.parts[0].longest == pytest.approx(np.hypot(10, 5)) and m.parts[0].perpendicular > 4
    assert m.parts[1].longest == pytest.approx(np.hypot(1.5, 3)) and m.parts[1].perpendicular > 1
    assert (m.longest, m.perpendicular) == (m.parts[0].longest, m.parts[0].perpendicular)
    lines = m.summary_by_part().splitlines()
    assert lines[0] == "2 parts, total 218 px, 54.5 mm²; 30 ± 0 HU"
    assert lines[1] == f"part 1: 200 px, 50.0 mm²; {np.hypot(10, 5):.1f} x {m.parts[0].perpendicular:.1f} mm"
    assert lines[2].startswith("part 2: 18 px, 4.5 mm²; 3.4 x ") and lines[2].endswith(" mm")
    single = measure_mask(mask[:30, :30], (0.5, 0.5))
    assert len(single.parts) == 1 and single.summary_by_part() == single.summary()
    speckles = np.zeros((40, 40), bool)
    speckles[::3, ::3] = True  # 196 one-pixel parts: only the largest few get diameters
    many = measure_mask(speckles)
    assert len(many.parts) == 196 and sum(p.longest is not None for p in many.parts) == MAX_MEASURED_PARTS
    assert many.summary_by_part().splitlines()[-1] == f"and {196 - MAX_MEASURED_PARTS} smaller part(s) of " \
                                                      f"{196 - MAX_MEASURED_PARTS} px in all"
