"""Measurements of a lesion mask: area, RECIST-style diameters, intensity statistics.

Diameters follow RECIST 1.1: the longest diameter of the lesion, and the longest diameter
perpendicular to it, measured per connected part (8-connected: one lesion each) in mm where the
pixel spacing is known (in pixels otherwise); ``longest``/``perpendicular`` are the largest part's,
``parts`` holds each part's, and area, pixel count and intensity statistics are of the whole mask.
Pixel extents count whole pixels (a 1-pixel lesion is 1 pixel across), using the pixel corners
rather than the centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


MAX_MEASURED_PARTS = 8  # parts whose diameters are measured (the largest; a speckled mask has hundreds)


@dataclass(frozen=True)
class Part:
    """One connected part of a mask: pixel count, area (mm² if the spacing is known, else px) and
    its RECIST diameters (mm or px); diameters are None beyond the MAX_MEASURED_PARTS largest."""

    pixels: int
    area: float
    longest: float | None = None
    perpendicular: float | None = None


@dataclass(frozen=True)
class Measurements:
    pixels: int
    components: int
    area: float  # mm^2 if ``in_mm`` else px
    longest: float  # mm if ``in_mm`` else px; of the largest component
    perpendicular: float
    in_mm: bool
    mean: float | None = None  # HU for CT, raw units otherwise; over the whole mask
    sd: float | None = None
    units: str = "raw"
    parts: tuple[Part, ...] = ()  # every connected part, largest first

    def summary_by_part(self) -> str:
        """The widget's lines: ``summary()`` for one part; for several, the total (pixels, area, HU)
        then one line per part, e.g. 'part 1: 412 px, 98.3 mm²; 14.2 x 9.8 mm'."""
        if len(self.parts) <= 1:
            return self.summary()
        length = "mm" if self.in_mm else "px"
        total = f"{len(self.parts)} parts, total {self.pixels} px" + (f", {self.area:.1f} mm²" if self.in_mm else "")
        if self.mean is not None:
            total += f"; {self.mean:.0f} ± {self.sd:.0f} {self.units}"
        lines = [total]
        for number, part in enumerate(self.parts[:MAX_MEASURED_PARTS], 1):
            line = f"part {number}: {part.pixels} px" + (f", {part.area:.1f} mm²" if self.in_mm else "")
            if part.longest is not None:
                line += f"; {part.longest:.1f} x {part.perpendicular:.1f} {length}"
            lines.append(line)
        rest = self.parts[MAX_MEASURED_PARTS:]
        if rest:
            lines.append(f"and {len(rest)} smaller part(s) of {sum(p.pixels for p in rest)} px in all")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for the widget, e.g. '412 px, 98.3 mm²; 14.2 x 9.8 mm; 71 ± 23 HU'."""
        if self.pixels == 0:
            return "no finding (empty mask)"
        length = "mm" if self.in_mm else "px"
        parts = [f"{self.pixels} px" + (f", {self.area:.1f} mm²" if self.in_mm else "")]
        parts.append(f"{self.longest:.1f} x {self.perpendicular:.1f} {length}"
                     + (f" (largest of {self.components})" if self.components > 1 else ""))
        if self.mean is not None:
            parts.append(f"{self.mean:.0f} ± {self.sd:.0f} {self.units}")
        return "; ".join(parts)

    def to_record(self) -> dict:
        key = "mm" if self.in_mm else "px"
        record = {"pixels": self.pixels, "components": self.components, f"area_{key}": round(self.area, 3),
                  f"longest_{key}": round(self.longest, 3), f"perpendicular_{key}": round(self.perpendicular, 3)}
        if self.mean is not None:
            record.update({f"mean_{self.units}": round(self.mean, 3), f"sd_{self.units}": round(self.sd, 3)})
        return record


def _corners(points: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The 4 corners of every pixel, in mm: (4N, 2)."""
    offsets = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    return ((points[:, None, :] + offsets[None]) * spacing).reshape(-1, 2)


def diameters(component: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """(longest, longest perpendicular to it) of one binary component, in the units of ``spacing``."""
    points = np.argwhere(component).astype(np.float64)
    scale = np.asarray(spacing, dtype=np.float64)
    corners = _corners(points, scale)
    try:
        from scipy.spatial import ConvexHull

        hull = corners[ConvexHull(corners).vertices]
    except Exception:  # degenerate (a line of pixels): every corner is on the hull
        hull = corners
    gaps = hull[:, None, :] - hull[None, :, :]
    lengths = np.sqrt((gaps ** 2).sum(-1))
    i, j = np.unravel_index(np.argmax(lengths), lengths.shape)
    longest = float(lengths[i, j])
    axis = gaps[i, j] / longest
    normal = np.array([-axis[1], axis[0]])
    # Perpendicular: the longest chord along ``normal`` among strips across the long axis.
    along = corners @ axis
    across = corners @ normal
    step = float(scale.min())
    strips = np.floor((along - along.min()) / step).astype(int)
    order = np.argsort(strips)
    strips, across = strips[order], across[order]
    bounds = np.flatnonzero(np.diff(strips)) + 1
    perpendicular = max(float(chunk.max() - chunk.min()) for chunk in np.split(across, bounds))
    return longest, perpendicular


def measure_mask(mask: np.ndarray, spacing_mm: tuple[float, float] | None = None,
                 image: np.ndarray | None = None, hounsfield: bool = False) -> Measurements:
    """Measurements of a (H,W) mask; ``image`` (same shape) gives the mean and SD inside it."""
    mask = np.asarray(mask, dtype=bool)
    units = "HU" if hounsfield else "raw"
    count = int(mask.sum())
    if count == 0:
        return Measurements(0, 0, 0.0, 0.0, 0.0, spacing_mm is not None, units=units)
    labels, components = ndimage.label(mask, structure=np.ones((3, 3)))
    spacing = spacing_mm or (1.0, 1.0)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")  # largest first; equal sizes in label order
    pixel_area = spacing[0] * spacing[1] if spacing_mm is not None else 1.0
    parts = []
    if len(order) > 1:
        boxes = ndimage.find_objects(labels)
    for rank, index in enumerate(order):
        count_i = int(sizes[index])
        if rank < MAX_MEASURED_PARTS:
            if len(order) == 1:
                part_mask = mask
            else:  # measured inside the part's bounding box: cheap for many small parts
                box = boxes[index]
                part_mask = labels[box] == index + 1
            parts.append(Part(count_i, count_i * pixel_area, *diameters(part_mask, spacing)))
        else:
            parts.append(Part(count_i, count_i * pixel_area))
    longest, perpendicular = parts[0].longest, parts[0].perpendicular
    mean = sd = None
    if image is not None:
        values = np.asarray(image, dtype=np.float64)[mask]
        mean, sd = float(values.mean()), float(values.std())
    return Measurements(count, int(components), count * spacing[0] * spacing[1], longest, perpendicular,
                        spacing_mm is not None, mean, sd, units, tuple(parts))
