"""Lesion selector: scores each lesion candidate of a slice against the expression.

Not a paper module (docs/model.md, "Grounding the words"). LSMS's mask for "all lesions" gives
the candidates; ``lsms_core.selection`` describes each one (what the decoder sees on and around
it, where it is, how large, dark and round it is, each also relative to the slice's other
candidates), and this head decides which candidates the words name. Trained by
``lsms-train-selector``.
"""

from __future__ import annotations

import torch
from torch import nn


class LesionSelector(nn.Module):
    """``forward(features, valid, sentence)``: candidate descriptors (B,K,F), a (B,K) bool mask of
    real candidates and the sentence feature (B,C_l) -> membership logits (B,K) (-inf where not
    valid). A candidate belongs to the answer where its logit is > 0.

    Each candidate is embedded alone, then sees the mean of its slice's candidates (what the
    others look like: "largest" is a comparison), and the sentence scales and shifts it (FiLM)
    before the score.
    """

    def __init__(self, feature_dim: int, text_dim: int, hidden: int = 128, geometry_only: int | None = None) -> None:
        """``geometry_only`` N: read only the last N descriptor columns (the geometry; the decoder
        features on and around each candidate are then ignored)."""
        super().__init__()
        self.geometry_only = geometry_only
        width = geometry_only or feature_dim
        self.candidate = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                       nn.Linear(hidden, hidden))
        self.context = nn.Linear(hidden, hidden)
        self.sentence = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden))
        self.score = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, valid: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        if self.geometry_only:
            features = features[..., -self.geometry_only:]
        embedded = self.candidate(features)  # (B,K,H)
        weights = valid.to(embedded.dtype).unsqueeze(-1)
        mean = (embedded * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        embedded = embedded + self.context(mean)
        scale, shift = self.sentence(sentence).unsqueeze(1).chunk(2, dim=-1)
        logits = self.score(embedded * (1 + scale) + shift).squeeze(-1)
        return logits.masked_fill(~valid, float("-inf"))
