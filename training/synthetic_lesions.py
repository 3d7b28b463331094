"""Synthetic liver lesions inserted into one real CT slice (2-D), after Hu et al., CVPR 2023,
"Label-Free Liver Tumor Segmentation" (their public ``TumorGenerated`` code, redone per slice).

The recipe, step by step (numbers are this module's defaults, :class:`SynthConfig`):

- **Location**: centres inside the liver eroded by ``centre_margin_px`` and off the vessels
  (parenchyma pixels of the Gaussian-smoothed slice brighter than median + ``vessel_sd`` SD of the
  parenchyma, dilated by 1 px); the lesion body must not touch a vessel pixel. A lesion is clipped to
  the liver eroded by 1 px (so it lies wholly inside the liver) and keeps ``gap_px`` pixels of
  parenchyma to every real tumour and every other synthetic lesion, so 8-connected components stay
  separate. Placement is drawn per lesion: at the liver surface, deep inside, or anywhere.
- **Shape**: an ellipse (random axes, random angle) warped by an elastic deformation (a random
  displacement on a coarse grid of control points, interpolated cubically: the recipe's
  ``elasticdeform.deform_random_grid``); irregular lesions get a finer grid and larger displacements.
- **Texture**: Gaussian noise, blurred, scaled; soft edges: the mask blurred by a Gaussian is the alpha.
- **Density**: the change is *subtracted from* (hypodense) or *added to* (hyperdense) the real pixels
  under the lesion (as the recipe does), scaled so that the lesion's mean HU minus the mean HU of the
  parenchyma ring around it (the fact engine's 6-px ring) is the drawn shift, 65-145 HU; isodense
  lesions: within +-5 HU of that ring, with a visible texture (SD 10-20 HU).
  (The recipe's code draws its "difference" from 65-145 HU but multiplies it by a texture whose mean
  is at most about 0.5, so its realised contrast is half that or less; here 65-145 is the realised
  contrast.)
- **Optional** (probabilities, 0 turns them off): mass effect, a small radial outward displacement of
  the surrounding parenchyma; capsule, a thin rim brighter (around hypodense) or darker (around
  hyperdense) than the liver.

Only pixels of liver parenchyma (label 1) and of the new lesion change: the background, real tumours
and earlier synthetic lesions keep their exact values. Lesion pixels become label 2 (tumour), so the
referring fact engine (training/reflits.py) measures them exactly as it measures real tumours.
numpy / scipy / scikit-image only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lsms_core.lits import LIVER, TUMOUR

DENSITIES = ("hypodense", "hyperdense", "isodense")
PLACEMENTS = ("surface", "deep", "anywhere")
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class SynthConfig:
    """What the sampler draws from; every number here is documented in docs/training.md."""

    total_lesions: tuple[int, int] = (1, 6)  # per slice, real + synthetic (at least one synthetic)
    radius_px: tuple[float, float] = (2.0, 12.0)  # equivalent radius, drawn log-uniformly
    size_separation: float = 1.35  # area ratio kept to every other lesion of the slice ...
    separate_sizes_p: float = 0.8  # ... for this share of the lesions (the rest may tie)
    density_p: tuple[float, float, float] = (0.65, 0.15, 0.20)  # hypodense, hyperdense, isodense
    # |mean HU change| of hypo- and hyperdense lesions: the recipe's 65-145 HU difference times its
    # texture's mean (~0.5), i.e. the contrast its lesions really have; real tumours here: -23 to -60 HU.
    shift_hu: tuple[float, float] = (32.5, 72.5)
    iso_shift_hu: float = 5.0  # isodense: mean change within +-this
    iso_texture_hu: tuple[float, float] = (10.0, 20.0)  # isodense: SD of its texture
    texture_amplitude: tuple[float, float] = (0.1, 0.3)  # hypo/hyper: texture SD as a share of the shift
    texture_sigma_px: tuple[float, float] = (0.8, 2.0)  # blur of the texture noise
    edge_sigma_px: tuple[float, float] = (0.6, 1.2)  # blur of the mask: the soft edge
    irregular_p: float = 0.3
    placement_p: tuple[float, float, float] = (0.3, 0.3, 0.4)  # surface, deep, anywhere
    mass_effect_p: float = 0.3
    mass_effect_px: tuple[float, float] = (0.15, 0.3)  # peak outward push, times the radius (<= 2 px)
    capsule_p: float = 0.2
    capsule_hu: tuple[float, float] = (20.0, 40.0)
    vessel_sd: float = 1.5
    centre_margin_px: int = 2  # centres lie in the liver eroded by this (the recipe's 5x5 erosion)
    gap_px: int = 2
    min_area_px: int = 8
    tries: int = 40


@dataclass
class SyntheticLesion:
    """One inserted lesion: its final mask and what was drawn for it."""

    mask: np.ndarray
    density: str
    radius_px: float  # intended equivalent radius
    centre: tuple[float, float]  # (row, col) of the final mask's centroid
    shift_hu: float  # intended mean HU change over the mask (signed)
    shape: str  # round | irregular
    placement: str  # surface | deep | anywhere
    mass_effect_px: float = 0.0
    capsule_hu: float = 0.0

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def describe(self) -> dict:
        """JSON-ready summary (no mask)."""
        return {"centre": [round(self.centre[0], 2), round(self.centre[1], 2)], "density": self.density,
                "radius_px": round(self.radius_px, 2), "area_px": self.area, "shift_hu": round(self.shift_hu, 1),
                "shape": self.shape, "placement": self.placement, "mass_effect_px": round(self.mass_effect_px, 2),
                "capsule_hu": round(self.capsule_hu, 1)}


def vessel_mask(hu: np.ndarray, labels: np.ndarray, sd: float = 1.5, smooth_px: float = 0.8,
                dilate_px: int = 1) -> np.ndarray:
    """Liver vessels: parenchyma pixels of the smoothed slice brighter than median + ``sd`` SD of the
    parenchyma (contrast-filled vessels in portal-venous CT), dilated by ``dilate_px``."""
    parenchyma = labels == LIVER
    if parenchyma.sum() < 10:
        return np.zeros(hu.shape, dtype=bool)
    values = hu[parenchyma]
    smoothed = ndimage.gaussian_filter(hu.astype(np.float32), smooth_px)
    vessels = (smoothed > np.median(values) + sd * values.std()) & parenchyma
    if dilate_px > 0 and vessels.any():
        vessels = ndimage.binary_dilation(vessels, _EIGHT, iterations=dilate_px)
    return vessels


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask, structure=_EIGHT)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def lesion_shape(radius: float, irregular: bool, rng: np.random.Generator) -> np.ndarray:
    """A (P,P) bool patch centred at (P//2, P//2): an elastically deformed ellipse whose area is
    about pi * radius^2."""
    aspect = rng.uniform(1.2, 2.0) if irregular else rng.uniform(1.0, 1.5)
    a, b = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
    angle = rng.uniform(0.0, math.pi)
    half = int(math.ceil(a * 1.6)) + 2
    size = 2 * half + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    u = (xx * math.cos(angle) + yy * math.sin(angle)) / a
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) / b
    ellipse = (u * u + v * v <= 1.0).astype(np.float32)
    # Elastic deformation: random displacements at a coarse grid of control points, cubic in between.
    points = int(rng.integers(5, 8)) if irregular else 3
    sigma = radius * (rng.uniform(0.5, 0.8) if irregular else rng.uniform(0.08, 0.18))
    coarse = rng.normal(0.0, sigma, size=(2, points, points)).astype(np.float32)
    grid = np.linspace(0, points - 1, size, dtype=np.float32)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    dy = ndimage.map_coordinates(coarse[0], [gy, gx], order=3, mode="nearest")
    dx = ndimage.map_coordinates(coarse[1], [gy, gx], order=3, mode="nearest")
    warped = ndimage.map_coordinates(ellipse, [yy + half + dy, xx + half + dx], order=1, mode="constant") > 0.5
    if not warped.any():
        warped = ellipse > 0.5
    return ndimage.binary_fill_holes(_largest_component(warped))


def sample_radii(count: int, existing_areas: list[float], rng: np.random.Generator,
                 config: SynthConfig) -> list[float]:
    """``count`` radii, log-uniform in ``config.radius_px``; most are drawn so that their area differs
    by >= ``size_separation`` x from every other lesion of the slice (so "largest", "smallest" and
    "second largest" are often clear under the fact engine's 1.25x margin)."""
    low, high = np.log(config.radius_px[0]), np.log(config.radius_px[1])
    areas = [float(a) for a in existing_areas]
    radii = []
    for _ in range(count):
        separate = rng.random() < config.separate_sizes_p
        for _ in range(30):
            radius = float(np.exp(rng.uniform(low, high)))
            area = math.pi * radius * radius
            if not separate or all(max(area, b) / min(area, b) >= config.size_separation for b in areas):
                break
        radii.append(radius)
        areas.append(area)
    return radii


def _paste(shape: tuple[int, int], patch: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    half = patch.shape[0] // 2
    r0, c0 = centre[0] - half, centre[1] - half
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + patch.shape[0], shape[0]), min(c0 + patch.shape[1], shape[1])
    out[rs:re, cs:ce] = patch[rs - r0:re - r0, cs - c0:ce - c0]
    return out


def _box(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    return (slice(max(rows.min() - pad, 0), min(rows.max() + pad + 1, mask.shape[0])),
            slice(max(cols.min() - pad, 0), min(cols.max() + pad + 1, mask.shape[1])))


class _Slice:
    """The working state of one slice while lesions are inserted."""

    def __init__(self, hu: np.ndarray, labels: np.ndarray, config: SynthConfig) -> None:
        self.hu = np.array(hu, dtype=np.float32, copy=True)
        self.labels = np.array(labels, dtype=np.uint8, copy=True)
        self.config = config
        self.liver = self.labels >= LIVER
        self.inner = ndimage.binary_erosion(self.liver, _EIGHT)  # lesions lie wholly inside this
        self.depth = ndimage.distance_transform_edt(self.liver)
        self.max_depth = float(self.depth.max())
        self.vessels = vessel_mask(self.hu, self.labels, config.vessel_sd, dilate_px=0)
        self.vessels_wide = ndimage.binary_dilation(self.vessels, _EIGHT) if self.vessels.any() else self.vessels
        self.protected = self.labels == TUMOUR  # real tumours, then also the inserted lesions
        self._clearance: np.ndarray | None = None

    def candidates(self, extent: float, placement: str) -> np.ndarray:
        """Centres for a lesion reaching ``extent`` px from its centre."""
        cfg = self.config
        if self._clearance is None:  # distance to the nearest tumour pixel, real or synthetic
            self._clearance = ndimage.distance_transform_edt(~self.protected) if self.protected.any() else \
                np.full(self.hu.shape, np.inf)
        clearance = self._clearance
        base = (self.depth > cfg.centre_margin_px) & ~self.vessels_wide & (clearance > extent + cfg.gap_px + 1)
        if placement == "surface":  # reaches the liver's edge: clipped there, flat against the capsule
            zone = (self.depth >= max(0.5 * extent, cfg.centre_margin_px + 1)) & (self.depth <= extent + 1.0)
        elif placement == "deep":  # its nearest pixel deeper than the fact engine's "deep inside"
            zone = self.depth >= extent + max(0.35 * self.max_depth, 8.0) + 0.5
            if not (base & zone).any():
                zone = self.depth >= extent + 3.0
        else:
            zone = self.depth >= 0.6 * extent
        return base & zone

    def place(self, radius: float, irregular: bool, placement: str, rng: np.random.Generator) -> np.ndarray | None:
        cfg = self.config
        for attempt in range(cfg.tries):
            scaled = max(radius * 0.85 ** (attempt // 10), cfg.radius_px[0])
            patch = lesion_shape(scaled, irregular, rng)
            rows, cols = np.nonzero(patch)
            half = patch.shape[0] // 2
            extent = float(np.sqrt(((rows - half) ** 2 + (cols - half) ** 2).max())) + 0.5
            where = placement if attempt < cfg.tries // 2 else "anywhere"
            centres = np.argwhere(self.candidates(extent, where))
            if len(centres) == 0:
                continue
            centre = tuple(int(v) for v in centres[rng.integers(len(centres))])
            mask = _paste(self.hu.shape, patch, centre) & self.inner
            if not mask.any():
                continue
            mask = ndimage.binary_fill_holes(_largest_component(mask)) & self.inner
            area = int(mask.sum())
            if area < max(cfg.min_area_px, 0.55 * patch.sum()):
                continue  # clipped away too much
            if (mask & self.vessels).any():
                continue  # the recipe's vessel collision check
            if (ndimage.binary_dilation(mask, _EIGHT, iterations=cfg.gap_px) & self.protected).any():
                continue
            return mask
        return None

    def mass_effect(self, mask: np.ndarray, amplitude: float) -> None:
        """Push the parenchyma around ``mask`` outwards by up to ``amplitude`` px (radial field ~ R/rho
        outside the lesion, tapering to 0 between 2R and 3R). Pixels near real or synthetic tumours
        and the liver's edge do not move, so labels stay valid."""
        area = mask.sum()
        radius = math.sqrt(area / math.pi)
        pad = int(math.ceil(3 * radius)) + 4
        box = _box(mask, pad)
        sub = self.hu[box]
        rows, cols = np.mgrid[box[0], box[1]].astype(np.float32)
        cr, cc = ndimage.center_of_mass(mask)
        dr, dc = rows - cr, cols - cc
        rho = np.sqrt(dr * dr + dc * dc) + 1e-6
        profile = np.where(rho < radius, rho / radius, radius / rho)
        t = np.clip((rho - 2 * radius) / max(radius, 1.0), 0.0, 1.0)
        profile = profile * (1 - t * t * (3 - 2 * t))  # smoothstep to 0 between 2R and 3R
        safe = ((self.labels[box] == LIVER)
                & ~ndimage.binary_dilation(self.protected[box], _EIGHT, iterations=3)
                & ndimage.binary_erosion(self.liver[box], _EIGHT, iterations=3, border_value=1))
        weight = ndimage.gaussian_filter(safe.astype(np.float32), 1.0) * safe
        push = amplitude * profile * weight
        source_r = rows - box[0].start - push * dr / rho
        source_c = cols - box[1].start - push * dc / rho
        moved = ndimage.map_coordinates(sub, [source_r, source_c], order=1, mode="nearest")
        self.hu[box] = np.where(weight > 0, moved, sub).astype(np.float32)

    def shade(self, mask: np.ndarray, density: str, shift: float, rng: np.random.Generator,
              capsule: float) -> float:
        """Apply the lesion's intensity change so that its mean HU minus the mean HU of the
        parenchyma ring around it (the fact engine's ring: 6-px dilation) is ``shift``.

        The change rides on the real pixels (the recipe subtracts from them), shaped by the soft
        edge and the texture; one scale (hypo/hyper) or offset (iso) is solved for. Returns the
        lesion's contrast against that ring after the change."""
        cfg = self.config
        box = _box(mask, 8)
        m = mask[box]
        parenchyma = (self.labels[box] == LIVER) & ~self.protected[box]
        allowed = parenchyma | m  # nothing but parenchyma and the lesion changes
        ring = ndimage.binary_dilation(m, iterations=6) & parenchyma & ~m
        if not ring.any():
            ring = parenchyma & ~m
        sub = self.hu[box]
        base = float(sub[m].mean()) - float(sub[ring].mean()) if ring.any() else 0.0
        alpha = ndimage.gaussian_filter(m.astype(np.float32), rng.uniform(*cfg.edge_sigma_px)) * allowed
        noise = ndimage.gaussian_filter(rng.standard_normal(m.shape).astype(np.float32),
                                        rng.uniform(*cfg.texture_sigma_px))
        noise = (noise - noise[m].mean()) / max(float(noise[m].std()), 1e-6)
        noise = np.clip(noise, -2.5, 2.5)
        rim = (ndimage.binary_dilation(m, _EIGHT) & ~m & allowed).astype(np.float32) * capsule

        def contrast(delta: np.ndarray) -> float:  # mean over the lesion minus mean over the ring
            return float(delta[m].mean()) - (float(delta[ring].mean()) if ring.any() else 0.0)

        # What the change itself must contribute, bounded so a bright or dark neighbourhood cannot
        # turn a lesion into the opposite kind.
        needed = float(np.clip(shift - base - contrast(rim), shift - 30.0, shift + 30.0))
        if density == "isodense":
            texture = alpha * noise * rng.uniform(*cfg.iso_texture_hu)
            offset = (needed - contrast(texture)) / max(contrast(alpha), 1e-3)
            delta = texture + offset * alpha
        else:
            field = alpha * (1.0 + rng.uniform(*cfg.texture_amplitude) * noise)
            scale = needed / max(contrast(field), 1e-3)
            if scale * shift <= 0:  # the neighbourhood alone already exceeds the shift: keep the sign
                scale = 0.5 * shift / max(float(field[m].mean()), 1e-3)
            delta = field * scale
        delta = delta + rim
        self.hu[box] = sub + delta.astype(np.float32)
        return base + contrast(delta)

    def add(self, mask: np.ndarray) -> None:
        self.labels[mask] = TUMOUR
        self.protected |= mask
        self._clearance = None


def count_components(labels: np.ndarray, min_area: int) -> list[int]:
    """Areas of the 8-connected tumour components of at least ``min_area`` px."""
    components, count = ndimage.label(labels == TUMOUR, structure=_EIGHT)
    areas = np.bincount(components.ravel())[1:]
    return [int(a) for a in areas if a >= min_area]


def insert_lesions(hu: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                   config: SynthConfig = SynthConfig(), count: int | None = None,
                   distractor_area: int = 6) -> tuple[np.ndarray, np.ndarray, list[SyntheticLesion]]:
    """Insert synthetic lesions into one slice: hu (H,W) HU, labels (H,W) 0/1/2.

    ``count`` synthetic lesions, or (None) as many as bring the slice's lesions (real components of
    >= ``distractor_area`` px plus synthetic) to a total drawn from ``config.total_lesions``, at
    least one. Returns the new hu (float32), the new labels (lesion pixels = 2) and the lesions
    inserted (possibly fewer than asked where the liver has no room).
    """
    state = _Slice(hu, labels, config)
    if not state.inner.any():
        return state.hu, state.labels, []
    real_areas = count_components(state.labels, distractor_area)
    if count is None:
        total = int(rng.integers(config.total_lesions[0], config.total_lesions[1] + 1))
        count = max(1, total - len(real_areas))
    radii = sorted(sample_radii(count, real_areas, rng, config), reverse=True)  # the largest first
    inserted: list[SyntheticLesion] = []
    for radius in radii:
        density = str(rng.choice(DENSITIES, p=config.density_p))
        irregular = bool(rng.random() < config.irregular_p)
        placement = str(rng.choice(PLACEMENTS, p=config.placement_p))
        mask = state.place(radius, irregular, placement, rng)
        if mask is None:
            continue
        push = 0.0
        if rng.random() < config.mass_effect_p:
            push = min(rng.uniform(*config.mass_effect_px) * radius, 2.0)
            state.mass_effect(mask, push)
        if density == "isodense":
            shift = rng.uniform(-config.iso_shift_hu, config.iso_shift_hu)
        else:
            shift = rng.uniform(*config.shift_hu) * (-1 if density == "hypodense" else 1)
        capsule = 0.0
        if rng.random() < config.capsule_p:
            sign = 1.0 if density == "hypodense" else -1.0 if density == "hyperdense" else rng.choice([-1.0, 1.0])
            capsule = float(sign * rng.uniform(*config.capsule_hu))
        state.shade(mask, density, shift, rng, capsule)
        state.add(mask)
        centre = ndimage.center_of_mass(mask)
        inserted.append(SyntheticLesion(mask, density, radius, (float(centre[0]), float(centre[1])), float(shift),
                                        "irregular" if irregular else "round", placement, push, capsule))
    return state.hu, state.labels, inserted
