"""Prompts made from masks: one box or one click per connected part, and "refine" (a mask's parts
become box prompts, the prompt model draws each outline, the union is the result).

Coordinates are image pixels, x = column, y = row, as ``PromptSegmenter.predict`` takes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .prompt_model import PromptSegmenter

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def mask_parts(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected parts of a binary mask (H,W), each as a (H,W) bool mask, largest first."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT_CONNECTED)
    if not count:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return [labels == index + 1 for index in np.argsort(-sizes, kind="stable")]


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the first and last column and row the mask covers (inclusive)."""
    rows = np.flatnonzero(np.asarray(mask, dtype=bool).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask, dtype=bool).any(axis=0))
    if not len(rows):
        raise ValueError("an empty mask has no box")
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def centre_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from the mask's border (Euclidean distance transform; the
    image edge counts as border). It lies inside the mask even for a crescent or a ring, where the
    centroid may not; ties go to the first such pixel in row-major order."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    if not padded.any():
        raise ValueError("an empty mask has no centre")
    distance = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(col), int(row)


def predict_parts(segmenter: "PromptSegmenter", mask: np.ndarray, prompt: str = "box", threshold: float = 0.5
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """One prompt per connected part of ``mask`` on the segmenter's current slice: ``box`` (the part's
    bounding box) or ``point`` (one positive click at its ``centre_point``). Returns the union of the
    predicted masks (H,W) bool, the pixel-wise maximum of their probabilities (H,W) float32, and
    the number of prompts. An empty mask gives an empty result and 0 prompts."""
    if prompt not in ("box", "point"):
        raise ValueError(f"prompt must be 'box' or 'point', got {prompt!r}")
    mask = np.asarray(mask, dtype=bool)
    union = np.zeros(mask.shape, dtype=bool)
    probability = np.zeros(mask.shape, dtype=np.float32)
    parts = mask_parts(mask)
    for part in parts:
        if prompt == "box":
            part_mask, part_probability = segmenter.predict(box=box_of(part), threshold=threshold)
        else:
            part_mask, part_probability = segmenter.predict(points=[centre_point(part)], labels=[1],
                                                            threshold=threshold)
        union |= part_mask
        np.maximum(probability, part_probability, out=probability)
    return union, probability, len(parts)


def refine(segmenter: "PromptSegmenter", mask: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A mask redrawn by the prompt model: each connected part becomes a box prompt, the union of
    the outlines is returned with its probability (H,W). Call ``segmenter.set_image`` with the
    mask's slice first."""
    refined, probability, _ = predict_parts(segmenter, mask, "box", threshold)
    return refined, probability
