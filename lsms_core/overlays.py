"""Outlines drawn into a DICOM file (overlay planes, groups 0x6000-0x601E) as filled masks (no Qt).

Viewers such as Siemens syngo save a reader's drawings as 1-bit overlay planes: a lesion outline, but
also text and marker boxes. Each closed outline with nothing drawn inside it is filled
(scipy.ndimage.binary_fill_holes) and kept; strokes that enclose nothing or less than their own
pixels (text such as "A", open lines) and closed shapes holding other strokes (a labelled box) are
left out, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .limits import MAX_SLICE_PIXELS

OVERLAY_GROUPS = tuple(range(0x6000, 0x6020, 2))  # PS3.3 C.9.2: up to 16 overlay planes, even groups


@dataclass
class DrawnOverlay:
    """One overlay plane as a mask of the image's size: ``mask`` (H,W) bool, the filled outlines kept;
    ``outlines``: how many were kept; ``left_out``: strokes and shapes that were not (text, boxes);
    ``description``: the plane's OverlayDescription or label ("" when none)."""

    group: int
    mask: np.ndarray
    outlines: int
    left_out: int
    description: str = ""


def filled_outlines(plane: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(mask, kept, left out): each closed outline of the 1-bit ``plane`` with nothing else drawn inside
    it, filled; strokes enclosing less than their own pixels (text, open lines) and shapes holding other
    strokes (a labelled box) left out. Outlines are 8-connected strokes."""
    from scipy import ndimage

    plane = np.asarray(plane) > 0
    strokes, count = ndimage.label(plane, structure=np.ones((3, 3), bool))
    mask = np.zeros(plane.shape, bool)
    kept = 0
    for number, box in enumerate(ndimage.find_objects(strokes), start=1):
        stroke = strokes[box] == number
        filled = ndimage.binary_fill_holes(stroke)
        inside = filled & ~stroke
        if inside.sum() < stroke.sum():
            continue  # encloses nothing, or less than its own stroke: text ("A", "O") or an open line
        if (strokes[box][inside] > 0).any():
            continue  # another stroke inside: a labelled box or marker, not a lesion outline
        mask[box] |= filled
        kept += 1
    return mask, kept, count - kept


def drawn_overlays(dataset, shape: tuple[int, int]) -> list[DrawnOverlay]:
    """The single-frame overlay planes of a pydicom dataset that hold at least one closed outline, as
    masks of the image's ``shape`` (the plane placed at its OverlayOrigin, cut to the image)."""
    found = []
    for group in OVERLAY_GROUPS:
        if (group << 16 | 0x3000) not in dataset:  # OverlayData
            continue
        try:
            frames = int(dataset.get((group, 0x0015), None).value or 1) if (group, 0x0015) in dataset else 1
            if frames != 1:
                continue  # multi-frame overlays: not offered
            if int(dataset[group, 0x0010].value) * int(dataset[group, 0x0011].value) > MAX_SLICE_PIXELS:
                continue  # OverlayRows x OverlayColumns beyond any slice this project reads: not unpacked
            plane = np.asarray(dataset.overlay_array(group))
            if plane.ndim != 2:
                continue
            origin = dataset.get((group, 0x0050))
            row, column = (int(v) - 1 for v in origin.value) if origin is not None else (0, 0)
            label = next((dataset[group, element] for element in (0x0022, 0x1500) if (group, element) in dataset),
                         None)  # OverlayDescription, else OverlayLabel
            description = str(label.value) if label is not None else ""
        except Exception:  # noqa: BLE001 - a damaged overlay is skipped; the image itself still opens
            continue
        placed = np.zeros(shape, bool)
        rows, columns = plane.shape[-2:]
        top, left = max(row, 0), max(column, 0)
        bottom, right = min(row + rows, shape[0]), min(column + columns, shape[1])
        if bottom <= top or right <= left:
            continue
        placed[top:bottom, left:right] = plane[top - row:bottom - row, left - column:right - column] > 0
        mask, kept, left_out = filled_outlines(placed)
        if kept:
            found.append(DrawnOverlay(group, mask, kept, left_out, description))
    return found

