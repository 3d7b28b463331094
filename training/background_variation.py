"""New training backgrounds for synthetic referring data: a LiTS slice resampled on a slightly
tilted plane inside one training block, rotated, scaled, shifted and elastically deformed, all in
one interpolation (``lsms-data build-synth --vary-backgrounds``). ``source.background`` of each
record holds the drawn parameters, from which :func:`render_background` rebuilds the image exactly.

Why: the selector trained on synthetic lesions over the training blocks' 47 axial backgrounds
might learn those backgrounds; this makes every background new. Measured (docs/model.md, "Tried:
varied and crowded backgrounds"): no effect beyond the seeds' spread, so the recipe does not use it.
The plane never leaves its block (z is clipped to the block's first and last slice), so no
validation, test or gap slice contributes a voxel.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lsms_core.lits import LitsVolume

from .reflits import oblique_planes


@dataclass(frozen=True)
class BackgroundVariation:
    """What is drawn per background (uniform in each range)."""

    max_tilt_deg: float = 6.0  # plane tilt about each in-plane axis (flattened to fit short blocks)
    rotation_deg: float = 12.0  # in-plane rotation, +-
    scale: tuple[float, float] = (0.95, 1.15)  # isotropic zoom (> 1 magnifies)
    aspect: float = 0.06  # extra row/column scale, +- (anisotropy)
    shift_px: float = 8.0  # translation per axis, +-
    elastic_px: float = 4.0  # largest displacement of the smooth elastic field, px
    elastic_sigma_px: float = 14.0  # smoothness of that field (Gaussian sigma), px


def draw_background(block: list[int], shape: tuple[int, int], rng: np.random.Generator,
                    variation: BackgroundVariation = BackgroundVariation()) -> dict:
    """The parameters of one new background from the axial slices ``block`` (consecutive z of one
    RefLiTS block) of a volume whose slices are ``shape`` (H, W): JSON-able, and all that
    :func:`render_background` needs to rebuild it exactly (the elastic field from its own seed)."""
    height, width = shape
    z_low, z_high = min(block), max(block)
    [(z_centre, tilt_r, tilt_c)] = oblique_planes(z_low, z_high, 1, variation.max_tilt_deg, height, width,
                                                  random.Random(int(rng.integers(2**62))))
    return {"block_z": [int(z_low), int(z_high)], "z_centre": float(z_centre), "tilt_rows_deg": float(tilt_r),
            "tilt_cols_deg": float(tilt_c),
            "rotation_deg": float(rng.uniform(-variation.rotation_deg, variation.rotation_deg)),
            "zoom": float(rng.uniform(*variation.scale)),
            "aspect": [float(a) for a in 1.0 + rng.uniform(-variation.aspect, variation.aspect, size=2)],
            "shift_px": [float(s) for s in rng.uniform(-variation.shift_px, variation.shift_px, size=2)],
            "elastic_px": float(variation.elastic_px), "elastic_sigma_px": float(variation.elastic_sigma_px),
            "elastic_seed": int(rng.integers(2**62))}


def render_background(volume: LitsVolume, drawn: dict) -> tuple[np.ndarray, np.ndarray]:
    """HU (H,W) float32 (trilinear) and labels (H,W) uint8 (nearest; LiTS's 0/1/2) of the background
    ``drawn`` (:func:`draw_background`).

    Every output pixel samples the volume at (z, r, c): r, c the pixel moved by the affine map (rotate
    about the centre, undo the zoom and aspect, shift) and the elastic field, z on the tilted plane
    through that (r, c), clipped to the block's first and last slice; beyond the slice's edges the
    image is mirrored (no smeared edge pixels). All parameters zero (zoom and aspect 1) give back the
    axial slice at a whole ``z_centre`` exactly.
    """
    height, width = volume.hu.shape[1:]
    z_low, z_high = drawn["block_z"]
    angle = np.radians(drawn["rotation_deg"])
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.stack([rows - centre[0], cols - centre[1]])  # output pixel, about the centre
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    to_source = rotation / (drawn["zoom"] * np.asarray(drawn["aspect"])[:, None])
    source = np.einsum("ij,jhw->ihw", to_source, out) + (centre - np.asarray(drawn["shift_px"]))[:, None, None]
    if drawn["elastic_px"] > 0:
        noise = np.random.default_rng(drawn["elastic_seed"]).standard_normal((2, height, width))
        field = ndimage.gaussian_filter(noise, drawn["elastic_sigma_px"], axes=(1, 2))
        source += field * (drawn["elastic_px"] / max(float(np.abs(field).max()), 1e-12))
    z = (drawn["z_centre"] + (source[0] - centre[0]) * np.tan(np.radians(drawn["tilt_rows_deg"]))
         + (source[1] - centre[1]) * np.tan(np.radians(drawn["tilt_cols_deg"])))
    coordinates = np.stack([np.clip(z, z_low, z_high), source[0], source[1]])
    hu = ndimage.map_coordinates(volume.hu, coordinates, order=1, mode="mirror").astype(np.float32)
    labels = ndimage.map_coordinates(volume.labels, coordinates, order=0, mode="mirror").astype(np.uint8)
    return hu, labels
