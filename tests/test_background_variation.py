"""Varied synthetic backgrounds (training/background_variation.py): exact when nothing varies, never
outside their block, rebuilt exactly from the stored parameters."""

from __future__ import annotations

import json

import numpy as np

from lsms_core.lits import LitsVolume
from training.background_variation import BackgroundVariation, draw_background, render_background


def _z_ramp_volume() -> LitsVolume:
    """Every voxel's HU is its slice index z; labels: a liver disc on every slice."""
    z, rows, cols = np.mgrid[0:64, 0:48, 0:40]
    labels = (((rows - 24) ** 2 + (cols - 20) ** 2) < 15 ** 2).astype(np.uint8)
    return LitsVolume(hu=z.astype(np.float32), labels=labels)


def test_no_variation_gives_back_the_axial_slice(lits):
    drawn = draw_background(list(range(30, 48)), lits.hu.shape[1:], np.random.default_rng(0))
    still = dict(drawn, z_centre=41.0, tilt_rows_deg=0.0, tilt_cols_deg=0.0, rotation_deg=0.0, zoom=1.0,
                 aspect=[1.0, 1.0], shift_px=[0.0, 0.0], elastic_px=0.0)
    hu, labels = render_background(lits, still)
    np.testing.assert_array_equal(hu, lits.hu[41])
    np.testing.assert_array_equal(labels, lits.labels[41])
    moved, _ = render_background(lits, drawn)
    assert not np.array_equal(moved, lits.hu[round(drawn["z_centre"])])


def test_every_voxel_read_lies_in_the_block_even_for_steep_strong_variations():
    volume = _z_ramp_volume()
    steep = BackgroundVariation(max_tilt_deg=30.0, rotation_deg=40.0, scale=(0.6, 1.6), shift_px=20.0, elastic_px=9.0)
    rng = np.random.default_rng(1)
    seen = []
    for block in (list(range(10, 24)), list(range(40, 58))):
        for _ in range(20):
            drawn = draw_background(block, volume.hu.shape[1:], rng, steep)
            hu, labels = render_background(volume, drawn)
            assert block[0] <= hu.min() and hu.max() <= block[-1], (hu.min(), hu.max(), block)
            assert hu.shape == labels.shape == (48, 40) and set(np.unique(labels)) <= {0, 1, 2}
            seen.append(float(hu.max() - hu.min()))
    assert max(seen) > 2, "the planes should tilt across several slices"


def test_the_stored_record_rebuilds_the_image(lits):
    drawn = draw_background(list(range(30, 48)), lits.hu.shape[1:], np.random.default_rng(2))
    stored = json.loads(json.dumps(drawn))
    first, second = render_background(lits, drawn), render_background(lits, stored)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    other = render_background(lits, dict(stored, elastic_seed=stored["elastic_seed"] + 1))
    assert not np.array_equal(first[0], other[0])
