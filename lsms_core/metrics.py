"""The one segmentation metric of the project: per-image Dice and IoU, mean over images.

This is LViT's protocol (and the paper's "mIoU"): threshold probabilities at 0.5, score each
image on its own, then average the per-image scores, so a small lesion counts as much as a
large one.

Empty prediction on an empty target: scored ``empty_score``, 1.0 by default. A referring
expression may rightly name nothing on a slice ("no such finding" is a valid annotation in
our datasets), and a model that correctly draws nothing deserves full marks. LViT's test code
scores this case 0; pass ``empty_score=0.0`` to reproduce its figures. An empty prediction on
a non-empty target (or the reverse) always scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np


def dice_iou(prediction: np.ndarray, target: np.ndarray, empty_score: float = 1.0) -> tuple[float, float]:
    """Dice ``2|P&G|/(|P|+|G|)`` and IoU ``|P&G|/|P|G|`` of two binary masks of one image (H,W)."""
    pred = np.asarray(prediction).astype(bool)
    true = np.asarray(target).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and target {true.shape} differ in shape")
    inter = np.count_nonzero(pred & true)
    total = np.count_nonzero(pred) + np.count_nonzero(true)
    if total == 0:
        return empty_score, empty_score
    return 2.0 * inter / total, inter / (total - inter)


def boundary_f1(prediction: np.ndarray, target: np.ndarray, tolerance: float = 1.0, empty_score: float = 1.0) -> float:
    """Boundary F1 of one image (the BF score of Csurka et al., 2013): how well the outlines agree.

    The outline of a mask is its pixels with a 4-neighbour outside it (the image edge counts as
    outside). Precision: the share of the predicted outline within ``tolerance`` pixels (Euclidean)
    of the target's outline; recall: the reverse; F1 their harmonic mean. Two empty masks score
    ``empty_score``, one empty mask 0. Dice rewards overlap; this rewards following the edge."""
    from scipy import ndimage

    pred = np.asarray(prediction).astype(bool)
    true = np.asarray(target).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and target {true.shape} differ in shape")
    if not pred.any() and not true.any():
        return empty_score
    if not pred.any() or not true.any():
        return 0.0
    edges = [mask & ~ndimage.binary_erosion(mask, border_value=0) for mask in (pred, true)]
    near = [ndimage.distance_transform_edt(~edge) <= tolerance for edge in edges]
    precision = np.count_nonzero(edges[0] & near[1]) / np.count_nonzero(edges[0])
    recall = np.count_nonzero(edges[1] & near[0]) / np.count_nonzero(edges[1])
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


@dataclass
class Scores:
    """Per-image Dice and IoU, in the order added, and their means."""

    dice_per_image: list[float] = field(default_factory=list)
    iou_per_image: list[float] = field(default_factory=list)
    empty_score: float = 1.0

    def add(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
        d, i = dice_iou(prediction, target, self.empty_score)
        self.dice_per_image.append(d)
        self.iou_per_image.append(i)
        return d, i

    @property
    def n(self) -> int:
        return len(self.dice_per_image)

    @property
    def dice(self) -> float:
        return float(np.mean(self.dice_per_image)) if self.n else float("nan")

    @property
    def miou(self) -> float:
        return float(np.mean(self.iou_per_image)) if self.n else float("nan")

    def summary(self) -> dict[str, float | int]:
        return {"dice": self.dice, "miou": self.miou, "n": self.n}


def score_masks(predictions: Iterable[np.ndarray], targets: Iterable[np.ndarray], empty_score: float = 1.0) -> Scores:
    """Mean per-image Dice/IoU over paired binary masks."""
    scores = Scores(empty_score=empty_score)
    for prediction, target in zip(predictions, targets, strict=True):
        scores.add(prediction, target)
    return scores
