"""Measurements of a lesion followed through a volume: volume, RECIST 1.1 axial diameters, HU statistics.

RECIST 1.1 measures a lesion by its longest diameter in the axial plane, over all slices, and (for
lymph nodes, and as the usual companion figure) the longest diameter perpendicular to it on the same
slice. Per slice the lesion's mask is measured as one lesion (its parts together: the follower kept
only parts that continue one lesion), with ``lsms_core.measure.diameters``. Volume is the voxel
count times the voxel volume (row x column spacing x slice spacing, mm^3; 1 mL = 1000 mm^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .measure import diameters


@dataclass(frozen=True)
class VolumeMeasurements:
    """``volume``: mL when ``in_mm`` else voxels; ``longest``/``short_axis``: mm when ``in_mm`` else px,
    on slice ``longest_slice`` (its index in the volume); ``slices``: how many slices hold the lesion,
    ``first_slice``..``last_slice`` the range; ``mean``/``sd`` of the image inside the mask (HU for CT,
    else raw units; None without an image)."""

    voxels: int
    slices: int
    first_slice: int
    last_slice: int
    volume: float
    longest: float
    short_axis: float
    longest_slice: int
    in_mm: bool
    mean: float | None = None
    sd: float | None = None
    units: str = "HU"

    def summary(self) -> str:
        """One line, e.g. "4.21 mL, longest 23.5 mm x 17.0 mm on slice 40, 9 slices (36-44), -12 +- 18 HU"."""
        if self.voxels == 0:
            return "empty mask"
        size = (f"{self.volume:.2f} mL, longest {self.longest:.1f} mm x {self.short_axis:.1f} mm" if self.in_mm else
                f"{self.volume:.0f} voxels, longest {self.longest:.1f} px x {self.short_axis:.1f} px (spacing unknown)")
        text = (f"{size} on slice {self.longest_slice}, {self.slices} slice{'s' if self.slices != 1 else ''} "
                f"({self.first_slice}-{self.last_slice})")
        if self.mean is not None:
            text += f", {self.mean:.0f} ± {self.sd:.0f} {self.units}"
        return text

    def to_record(self) -> dict:
        """JSON-ready, the units named in the keys."""
        size = "mm" if self.in_mm else "px"
        return {"voxels": self.voxels, "slices": self.slices, "first_slice": self.first_slice,
                "last_slice": self.last_slice, ("volume_ml" if self.in_mm else "volume_voxels"): self.volume,
                f"longest_{size}": self.longest, f"short_axis_{size}": self.short_axis,
                "longest_slice": self.longest_slice, "mean": self.mean, "sd": self.sd, "units": self.units}


def measure_volume(mask: np.ndarray, spacing_mm: tuple[float, float] | None = None,
                   slice_spacing_mm: float | None = None, image: np.ndarray | None = None,
                   hounsfield: bool = False) -> VolumeMeasurements:
    """Measurements of a (Z,H,W) lesion mask. ``spacing_mm`` (row, column) and ``slice_spacing_mm``
    give mm and mL; without both, sizes are in pixels and voxels. ``image`` (Z,H,W) gives mean and SD."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"a volume mask is (Z,H,W), got shape {mask.shape}")
    if image is not None and np.shape(image) != mask.shape:
        raise ValueError(f"the image is {np.shape(image)}, the mask {mask.shape}")
    units = "HU" if hounsfield else "raw"
    in_mm = spacing_mm is not None and slice_spacing_mm is not None
    holding = np.flatnonzero(mask.any(axis=(1, 2)))
    if not len(holding):
        return VolumeMeasurements(0, 0, -1, -1, 0.0, 0.0, 0.0, -1, in_mm, units=units)
    spacing = tuple(spacing_mm) if in_mm else (1.0, 1.0)
    best = (-1.0, 0.0, -1)
    for z in holding:
        rows, cols = np.nonzero(mask[z])  # measured inside its bounding box
        longest, short = diameters(mask[z, rows.min():rows.max() + 1, cols.min():cols.max() + 1], spacing)
        if longest > best[0]:
            best = (longest, short, int(z))
    voxels = int(mask.sum())
    volume = voxels * spacing[0] * spacing[1] * slice_spacing_mm / 1000.0 if in_mm else float(voxels)
    mean = sd = None
    if image is not None:
        values = np.asarray(image, dtype=np.float64)[mask]
        mean, sd = float(values.mean()), float(values.std())
    return VolumeMeasurements(voxels, len(holding), int(holding[0]), int(holding[-1]), volume, best[0], best[1],
                              best[2], in_mm, mean, sd, units)
