"""Training losses of LSMS (paper section III-E, eqs. 13-15).

``L = focal(M,G) + wdice(M,G;W) + alpha * L_con``, where W up-weights the boundary band
``E = dilate(G) - erode(G)`` by lambda and L_con is an InfoNCE between positive-pixel
embeddings, the sentence embedding and negative-pixel embeddings. All computed in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .model.lsms import LSMSOutput


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms; defaults are the paper's (alpha, lambda, tau) and MODEL.md's."""

    contrastive_weight: float = 0.125  # alpha
    boundary_weight: float = 1.2  # lambda
    temperature: float = 0.1  # tau
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    max_positives: int = 2048
    max_negatives: int = 4096
    literal_eq14: bool = False  # True: eq. 14 as printed (no log); default InfoNCE with -log


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss, mean over all pixels. logits and target (B,1,H,W); target in {0,1}."""
    logits, target = logits.float(), target.float()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * (1 - p_t) ** gamma * ce).mean()


def boundary_band(target: torch.Tensor) -> torch.Tensor:
    """``dilate(G) - erode(G)`` with a 3x3 square, one iteration. (B,1,H,W) {0,1} -> same shape.

    Outside the image counts as neither foreground for dilation nor background for erosion.
    """
    target = target.float()
    dilated = F.max_pool2d(target, 3, stride=1, padding=1)
    eroded = 1 - F.max_pool2d(1 - target, 3, stride=1, padding=1)
    return dilated - eroded


def weighted_dice_loss(prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per image ``1 - (2 sum WMG + 1) / (sum WM + sum WG + 1)``, mean over the batch.

    prob M, target G and weight W are (B,1,H,W).
    """
    prob, target, weight = prob.float(), target.float(), weight.float()
    dims = tuple(range(1, prob.ndim))
    intersection = (weight * prob * target).sum(dims)
    total = (weight * prob).sum(dims) + (weight * target).sum(dims)
    return (1 - (2 * intersection + 1) / (total + 1)).mean()


def contrastive_loss(embedding: torch.Tensor, sentence: torch.Tensor, target: torch.Tensor,
                     temperature: float = 0.1, max_positives: int = 2048, max_negatives: int = 4096,
                     literal_eq14: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Vision-language contrastive loss (eq. 14) as InfoNCE.

    embedding (B,D,h,w) pixel features; sentence (B,D); target (B,1,H,W) resized to (h,w) by
    nearest. For each image with at least one positive and one negative pixel, each positive
    p_i scores ``[p_i.L/tau, p_i.n_1/tau, ...]`` and pays ``-log softmax[0]``; mean over
    positives, then images. Images without both kinds of pixels are skipped (0 if none qualify).
    """
    embedding = F.normalize(embedding.float(), dim=1)
    sentence = F.normalize(sentence.float(), dim=-1)
    labels = F.interpolate(target.float(), size=embedding.shape[-2:], mode="nearest")
    losses = []
    for feats, sent, lab in zip(embedding, sentence, labels):
        flat = feats.flatten(1).T  # (hw, D)
        mask = lab.flatten() > 0.5
        pos, neg = flat[mask], flat[~mask]
        if len(pos) == 0 or len(neg) == 0:
            continue
        pos = _subsample(pos, max_positives, generator)
        neg = _subsample(neg, max_negatives, generator)
        logits = torch.cat([(pos @ sent).unsqueeze(1), pos @ neg.T], dim=1) / temperature
        if literal_eq14:
            losses.append(-torch.softmax(logits, dim=1)[:, 0].mean())
        else:
            losses.append((torch.logsumexp(logits, dim=1) - logits[:, 0]).mean())
    if not losses:
        return embedding.new_zeros(())
    return torch.stack(losses).mean()


def _subsample(rows: torch.Tensor, limit: int, generator: torch.Generator | None) -> torch.Tensor:
    if len(rows) <= limit:
        return rows
    index = torch.randperm(len(rows), generator=generator, device="cpu")[:limit].to(rows.device)
    return rows[index]


class LSMSLoss(nn.Module):
    """``focal + boundary-weighted dice + alpha * contrastive``; returns the total and each term."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def forward(self, output: LSMSOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """output of ``LSMS.forward_features``; target (B,1,S,S) in {0,1}."""
        cfg = self.config
        logits = output.logits.float()
        target = target.float()
        focal = focal_loss(logits, target, cfg.focal_alpha, cfg.focal_gamma)
        band = boundary_band(target)
        weight = cfg.boundary_weight * band + (1 - band)
        dice = weighted_dice_loss(torch.sigmoid(logits), target, weight)
        total = focal + dice
        terms = {"focal": focal.detach(), "dice": dice.detach()}
        if output.sentence is not None and cfg.contrastive_weight > 0:
            contrast = contrastive_loss(output.embedding, output.sentence, target, cfg.temperature,
                                        cfg.max_positives, cfg.max_negatives, cfg.literal_eq14)
            total = total + cfg.contrastive_weight * contrast
            terms["contrastive"] = contrast.detach()
        terms["total"] = total
        return terms
