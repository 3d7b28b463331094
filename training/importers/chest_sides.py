"""Which side of a frontal chest radiograph a finding lies on, in the patient's frame.

Radiological convention: a frontal (PA or AP) radiograph is shown as if facing the patient, so the
patient's **right** lung is on the image's **left** (low column indices) and the patient's left lung on
the image's right. The split between the two lung fields is the mediastinum, read from the image
itself: the spine and heart make a bright vertical band between the two dark lung fields. Its column
is the brightest column band of the middle rows within the central part of the image, nudged to where
the finding's mask is thinnest so that one lung's opacity is never cut in two.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CENTRAL_BAND = (0.3, 0.7)  # share of the width where the mediastinum is looked for
MIDDLE_ROWS = (0.2, 0.8)  # share of the height whose column means locate it


def mediastinum_column(image: np.ndarray, mask: np.ndarray | None = None) -> int:
    """The column (0-based, in pixels) that separates the two lung fields of a frontal chest image.

    image: (H, W) grey radiograph, brighter = denser (MONOCHROME2). mask: optional (H, W) finding mask;
    among columns almost as bright as the brightest, the one crossing the fewest mask pixels wins.
    """
    grey = np.asarray(image, dtype=np.float32)
    height, width = grey.shape
    rows = grey[int(height * MIDDLE_ROWS[0]):max(int(height * MIDDLE_ROWS[1]), int(height * MIDDLE_ROWS[0]) + 1)]
    profile = ndimage.uniform_filter1d(rows.mean(axis=0), size=max(3, width // 16), mode="nearest")
    low, high = int(width * CENTRAL_BAND[0]), max(int(width * CENTRAL_BAND[1]), int(width * CENTRAL_BAND[0]) + 1)
    band = profile[low:high]
    spread = float(band.max() - np.median(profile)) or 1.0
    bright = band >= band.max() - 0.15 * spread  # columns near the brightest: the mediastinum's width
    if mask is not None and np.asarray(mask).any():
        crossing = np.asarray(mask, bool)[:, low:high].sum(axis=0).astype(np.float32)
        crossing[~bright] = np.inf
        return low + int(np.argmin(crossing + 1e-3 * (band.max() - band)))
    return low + int(np.argmax(band))


def patient_sides(image: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """``{"right": ..., "left": ...}``: the parts of ``mask`` in the patient's right and left lung fields
    (each (H, W) bool), split at the mediastinum's column; the patient's right is the image's left."""
    mask = np.asarray(mask, bool)
    column = mediastinum_column(image, mask)
    right, left = np.zeros_like(mask), np.zeros_like(mask)
    right[:, :column] = mask[:, :column]
    left[:, column:] = mask[:, column:]
    return {"right": right, "left": left}
