"""Independent re-measurement of lesion facts, shared by the RefLiTS and synthetic-data tests: what a
reader checking the image would compute, written apart from training/reflits.py's fact engine."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops

from lsms_core.lits import LIVER, TUMOUR


def measure_lesions(hu, labels):
    """Every tumour component (>= 6 px) with independently computed measurements."""
    liver = labels >= LIVER
    depth = ndimage.distance_transform_edt(liver)
    components, _ = ndimage.label(labels == TUMOUR, structure=np.ones((3, 3)))
    rows, cols = np.nonzero(liver)
    lesions = []
    for region in regionprops(components):
        if region.area < 6:
            continue
        mask = components == region.label
        ring = ndimage.binary_dilation(mask, iterations=6) & (labels == LIVER)
        lesions.append({"mask": mask, "area": region.area, "r": region.centroid[0], "c": region.centroid[1],
                        "contrast": hu[mask].mean() - hu[ring].mean(), "depth": depth[mask].min(),
                        "solidity": region.solidity, "ecc": region.eccentricity})
    return lesions, rows.mean(), cols.mean(), depth.max()


def fits(word, lesion, lesions, centre_r, centre_c, max_depth) -> bool:
    """Loose (margin-free) meaning of each word: what a reader checking the image would apply."""
    areas = sorted((x["area"] for x in lesions), reverse=True)
    return {
        "largest": lesion["area"] == areas[0],
        "second_largest": len(areas) > 1 and lesion["area"] == areas[1],
        "smallest": lesion["area"] == areas[-1],
        "darkest": lesion["contrast"] == min(x["contrast"] for x in lesions),
        "upper": lesion["r"] < centre_r, "lower": lesion["r"] > centre_r,
        "left": lesion["c"] < centre_c, "right": lesion["c"] > centre_c,
        "peripheral": lesion["depth"] < 3.5, "central": lesion["depth"] > 0.275 * max_depth,
        "hypodense": lesion["contrast"] < -12.5, "hyperdense": lesion["contrast"] > 12.5,
        "isodense": abs(lesion["contrast"]) < 14,
        "round": lesion["solidity"] >= 0.875 and lesion["ecc"] <= 0.85, "irregular": lesion["solidity"] < 0.84,
    }[word]
