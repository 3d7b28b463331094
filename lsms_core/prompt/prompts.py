"""Prompts made from masks: one box or one click per connected part, and "refine" (a mask's parts
become box prompts, the prompt model redraws each outline where it agrees with the part).

Coordinates are image pixels, x = column, y = row, as ``PromptSegmenter.predict`` takes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .tiny_vit import IMAGE_SIZE  # the prompt model's input side: refine's margins are in its pixels

if TYPE_CHECKING:
    from .prompt_model import PromptSegmenter

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# Refine (chosen on RefLiTS's validation split; docs/prompts.md, "Refine"): each part's box grown by
# REFINE_MARGIN px of the prompt model's 256-px input on every side (LiteMedSAM was trained on jittered
# boxes: a tight box cuts the lesion's rim), outlined by Refine's own decoder (refine_decoder.py), and the
# outline used only where its IoU with the part is >= REFINE_AGREEMENT (below it the prompt model outlined
# something else: a neighbouring structure, or half a necrotic tumour); the part is kept as it was otherwise.
REFINE_MARGIN = 4.0
REFINE_AGREEMENT = 0.8


def mask_parts(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected parts of a binary mask (H,W), each as a (H,W) bool mask, largest first."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT_CONNECTED)
    if not count:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return [labels == index + 1 for index in np.argsort(-sizes, kind="stable")]


def parts_at(mask: np.ndarray, points) -> np.ndarray:
    """(H,W) bool: the 8-connected parts of ``mask`` that hold one of ``points`` (x, y) (rounded to the
    nearest pixel, clipped into the image)."""
    labelled, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    height, width = mask.shape
    hit = {int(labelled[int(np.clip(round(y), 0, height - 1)), int(np.clip(round(x), 0, width - 1))])
           for x, y in points} - {0}
    return np.isin(labelled, list(hit)) if hit else np.zeros(mask.shape, dtype=bool)


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


def grown_box(box: tuple[int, int, int, int], margin: float, shape: tuple[int, int]
              ) -> tuple[float, float, float, float]:
    """``box`` (x0, y0, x1, y1) grown by ``margin`` px on every side, inside an image of ``shape`` (H,W)."""
    x0, y0, x1, y1 = box
    height, width = shape
    return (max(0.0, x0 - margin), max(0.0, y0 - margin), min(width - 1.0, x1 + margin),
            min(height - 1.0, y1 + margin))


def input_margin(shape: tuple[int, int], margin: float = REFINE_MARGIN) -> float:
    """``margin`` px of the prompt model's input in image pixels for a slice of ``shape`` (H,W)."""
    return margin * max(shape) / IMAGE_SIZE


def predict_parts(segmenter: "PromptSegmenter", mask: np.ndarray, prompt: str = "box", threshold: float = 0.5
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """One prompt per connected part of ``mask`` on the segmenter's current slice: ``box`` (the part's
    bounding box) or ``point`` (one positive click at its ``centre_point``). Returns the union of the
    predicted masks (H,W) bool, the pixel-wise maximum of their probabilities (H,W) float32, and the
    number of prompts. An empty mask gives an empty result and 0 prompts."""
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


@dataclass
class Refined:
    """A mask redrawn by ``refine``: ``mask`` (H,W) bool, ``probability`` (H,W) float32 (the prompt
    model's on redrawn parts, 1 on kept ones), and how many parts were ``redrawn`` or ``kept``."""

    mask: np.ndarray
    probability: np.ndarray
    redrawn: int
    kept: int


def refine(segmenter: "PromptSegmenter", mask: np.ndarray, threshold: float = 0.5, margin: float = REFINE_MARGIN,
           agreement: float = REFINE_AGREEMENT) -> Refined:
    """A mask redrawn by the prompt model: each connected part becomes a box prompt (grown by
    ``margin`` px of the model's input), outlined by the segmenter's refine decoder
    (``PromptSegmenter.refine_identity``); the outline replaces the part when their IoU is >=
    ``agreement``, else the part stays as it was. Call ``segmenter.set_image`` with the mask's slice
    first. ``agreement=0`` takes every outline."""
    mask = np.asarray(mask, dtype=bool)
    result = np.zeros(mask.shape, dtype=bool)
    probability = np.zeros(mask.shape, dtype=np.float32)
    grow = input_margin(mask.shape, margin)
    redrawn = kept = 0
    for part in mask_parts(mask):
        outline, outline_probability = segmenter.predict(box=grown_box(box_of(part), grow, mask.shape),
                                                         threshold=threshold, refining=True)
        union = np.count_nonzero(outline | part)
        if union and np.count_nonzero(outline & part) / union >= agreement:
            result |= outline
            np.maximum(probability, outline_probability, out=probability)
            redrawn += 1
        else:
            result |= part
            probability[part] = 1.0
            kept += 1
    return Refined(result, probability, redrawn, kept)
