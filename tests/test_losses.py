"""Losses on hand-made masks: the boundary band, weighted dice, focal, the contrastive term."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lsms_core.losses import LossConfig, LSMSLoss, boundary_band, contrastive_loss, focal_loss, weighted_dice_loss
from lsms_core.model.lsms import LSMSOutput


def _square(size: int = 7, lo: int = 2, hi: int = 5) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., lo:hi, lo:hi] = 1
    return mask


def test_boundary_band_of_a_square_is_the_ring_around_its_edge():
    band = boundary_band(_square())[0, 0]
    expected = torch.zeros(7, 7)
    expected[1:6, 1:6] = 1  # dilation of the 3x3 square at 2..4 reaches 1..5
    expected[3, 3] = 0  # erosion keeps only the centre pixel
    torch.testing.assert_close(band, expected)


def test_boundary_band_of_empty_and_full_masks_is_empty():
    assert boundary_band(torch.zeros(1, 1, 5, 5)).sum() == 0
    assert boundary_band(torch.ones(1, 1, 5, 5)).sum() == 0  # outside the image is not background


def test_weighted_dice_by_hand():
    target = _square()
    band = boundary_band(target)
    weight = 1.2 * band + (1 - band)
    # Perfect prediction: (2S+1)/(2S+1) -> loss 0.
    assert weighted_dice_loss(target, target, weight).item() == pytest.approx(0.0, abs=1e-7)
    # Empty prediction: 1 - 1/(sum W G + 1); G has 8 band pixels (w 1.2) and 1 inner pixel (w 1).
    assert weighted_dice_loss(torch.zeros_like(target), target, weight).item() == pytest.approx(1 - 1 / (8 * 1.2 + 1 + 1))
    # Prediction covering only the centre pixel: 1 - (2*1 + 1) / (1 + 10.6 + 1).
    centre = torch.zeros_like(target)
    centre[..., 3, 3] = 1
    assert weighted_dice_loss(centre, target, weight).item() == pytest.approx(1 - 3 / 12.6)


def test_boundary_weight_raises_the_cost_of_edge_errors():
    target = _square()
    band = boundary_band(target)
    miss_edge = target.clone()
    miss_edge[..., 2, 2] = 0  # an edge pixel missed
    plain = weighted_dice_loss(miss_edge, target, torch.ones_like(target))
    weighted = weighted_dice_loss(miss_edge, target, 1.2 * band + (1 - band))
    assert weighted > plain


def test_focal_loss_matches_its_formula():
    logits = torch.tensor([[[[2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    p = torch.sigmoid(logits)[0, 0, 0]
    expected = (0.25 * (1 - p[0]) ** 2 * -torch.log(p[0]) + 0.75 * p[1] ** 2 * -torch.log(1 - p[1])) / 2
    assert focal_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def _embedding_with(positive_direction: torch.Tensor, target: torch.Tensor, noise: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = positive_direction.numel()
    emb = torch.randn(1, d, *target.shape[-2:], generator=g)
    emb = emb + target[:, :1] * positive_direction.view(1, d, 1, 1) / noise
    return emb


def test_contrastive_loss_falls_when_positives_align_with_the_text():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:9, 4:9] = 1
    sentence = F.normalize(torch.randn(1, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    aligned = contrastive_loss(_embedding_with(sentence[0], target, noise=0.05), sentence, target)
    unrelated = contrastive_loss(_embedding_with(-sentence[0], target, noise=0.05), sentence, target)
    random = contrastive_loss(_embedding_with(sentence[0], target, noise=1e6), sentence, target)
    assert aligned < random < unrelated
    assert aligned >= 0


def test_contrastive_loss_literal_form_is_a_negative_probability():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :3, :3] = 1
    sentence = torch.randn(1, 16)
    value = contrastive_loss(torch.randn(1, 16, 8, 8), sentence, target, literal_eq14=True)
    assert -1.0 <= value.item() <= 0.0


def test_contrastive_loss_skips_images_without_both_kinds_of_pixels():
    sentence = torch.randn(2, 8)
    empty = torch.zeros(2, 1, 8, 8)
    assert contrastive_loss(torch.randn(2, 8, 8, 8), sentence, empty).item() == 0.0
    one_has_lesion = empty.clone()
    one_has_lesion[1, :, 2:4, 2:4] = 1
    assert contrastive_loss(torch.randn(2, 8, 8, 8), sentence, one_has_lesion).item() > 0


def test_contrastive_subsampling_bounds_the_work():
    target = torch.zeros(1, 1, 64, 64)
    target[..., :32, :] = 1  # 2048 positives, 2048 negatives
    sentence = torch.randn(1, 8)
    emb = torch.randn(1, 8, 64, 64)
    g = torch.Generator().manual_seed(0)
    small = contrastive_loss(emb, sentence, target, max_positives=10, max_negatives=20, generator=g)
    assert math.isfinite(small.item())


def test_total_loss_combines_terms_with_alpha():
    target = _square(16, 4, 10)
    logits = torch.randn(1, 1, 16, 16)
    output = LSMSOutput(logits, torch.randn(1, 8, 4, 4), torch.randn(1, 8))
    terms = LSMSLoss(LossConfig(contrastive_weight=0.125))(output, target)
    expected = terms["focal"] + terms["dice"] + 0.125 * terms["contrastive"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    text_free = LSMSLoss()(LSMSOutput(logits, output.embedding, None), target)
    assert "contrastive" not in text_free
