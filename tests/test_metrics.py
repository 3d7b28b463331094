"""The one metric: per-image Dice and IoU, averaged over images (LViT's protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from lsms_core.metrics import dice_iou, score_masks


def test_dice_and_iou_by_hand():
    pred = np.zeros((4, 4), bool)
    true = np.zeros((4, 4), bool)
    pred[0, :3] = True  # 3 px
    true[0, 1:] = True  # 3 px, overlap 2
    dice, iou = dice_iou(pred, true)
    assert dice == pytest.approx(2 * 2 / 6)
    assert iou == pytest.approx(2 / 4)


def test_empty_cases():
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    assert dice_iou(empty, empty) == (1.0, 1.0)  # a correct "no finding"
    assert dice_iou(empty, empty, empty_score=0.0) == (0.0, 0.0)  # LViT's convention
    assert dice_iou(empty, full) == (0.0, 0.0)
    assert dice_iou(full, empty) == (0.0, 0.0)


def test_mean_is_over_images_not_pooled_pixels():
    big = np.ones((10, 10), bool)
    small = np.zeros((10, 10), bool)
    small[0, 0] = True
    scores = score_masks([big, np.zeros((10, 10), bool)], [big, small])
    assert scores.dice == pytest.approx(0.5)  # pooled pixels would give 200/201
    assert scores.miou == pytest.approx(0.5)
    assert scores.summary() == {"dice": 0.5, "miou": 0.5, "n": 2}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice_iou(np.zeros((3, 3)), np.zeros((3, 4)))
