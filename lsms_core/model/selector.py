"""Lesion selectors: score each lesion candidate of a slice against the expression.

Not a paper module (docs/model.md, "Grounding the words"). LSMS's mask for "all lesions" gives
the candidates; ``lsms_core.selection`` describes each one (what the decoder sees on and around
it, where it is, how large, dark and round it is, each also relative to the slice's other
candidates), and a selector decides which candidates the words name. Trained by
``lsms-train-selector``.

All selectors share one call: ``selector(features, valid, words, word_mask)`` with candidate
descriptors (B,K,F), a (B,K) bool mask of real candidates, the text encoder's word features
(B,T,C_l) and their (B,T) mask -> membership logits (B,K), -inf where not valid. A candidate
belongs to the answer where its logit is > 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import SELECTOR_KINDS
from ..selection import sentence_feature


def _descriptor_embedding(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class LesionSelector(nn.Module):
    """The first selector ("film"): each candidate is embedded alone, then sees the mean of its
    slice's candidates (what the others look like: "largest" is a comparison), and the mean of the
    sentence's word features scales and shifts it (FiLM) before the score."""

    def __init__(self, feature_dim: int, text_dim: int, hidden: int = 128, geometry_only: int | None = None) -> None:
        """``geometry_only`` N: read only the last N descriptor columns (the geometry; the decoder
        features on and around each candidate are then ignored)."""
        super().__init__()
        self.geometry_only = geometry_only
        self.candidate = _descriptor_embedding(geometry_only or feature_dim, hidden)
        self.context = nn.Linear(hidden, hidden)
        self.sentence = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden))
        self.score = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, valid: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> torch.Tensor:
        if self.geometry_only:
            features = features[..., -self.geometry_only:]
        embedded = self.candidate(features)  # (B,K,H)
        weights = valid.to(embedded.dtype).unsqueeze(-1)
        mean = (embedded * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        embedded = embedded + self.context(mean)
        sentence = sentence_feature(words, word_mask).to(embedded.dtype)
        scale, shift = self.sentence(sentence).unsqueeze(1).chunk(2, dim=-1)
        logits = self.score(embedded * (1 + scale) + shift).squeeze(-1)
        return logits.masked_fill(~valid, float("-inf"))


class _SelectorBlock(nn.Module):
    """Pre-norm block: candidates attend to each other (comparisons), then to the words, then an MLP."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = (nn.LayerNorm(hidden) for _ in range(3))
        self.self_attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden, hidden))

    def forward(self, x: torch.Tensor, ignore: torch.Tensor, words: torch.Tensor, ignore_words: torch.Tensor):
        y = self.norm_self(x)
        x = x + self.self_attention(y, y, y, key_padding_mask=ignore, need_weights=False)[0]
        y = self.norm_cross(x)
        x = x + self.cross_attention(y, words, words, key_padding_mask=ignore_words, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class AttentionSelector(nn.Module):
    """The attention selector ("attention"): candidate embeddings attend to the other candidates of
    the slice and to every word (not only their mean: "second largest" and "largest" differ in one
    word) in ``layers`` pre-norm blocks, then each is scored alone."""

    def __init__(self, feature_dim: int, text_dim: int, hidden: int = 128, geometry_only: int | None = None,
                 layers: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.geometry_only = geometry_only
        self.candidate = _descriptor_embedding(geometry_only or feature_dim, hidden)
        self.words = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden))
        self.blocks = nn.ModuleList(_SelectorBlock(hidden, heads, dropout) for _ in range(layers))
        self.score = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, valid: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> torch.Tensor:
        if self.geometry_only:
            features = features[..., -self.geometry_only:]
        x = self.candidate(features)  # (B,K,H)
        text = self.words(words.to(x.dtype))  # (B,T,H)
        # A row with no candidate (or no word) would make attention's softmax 0/0: let it see its first
        # (padding) slot; its logits are masked below anyway.
        ignore = ~valid
        ignore[:, 0] &= valid.any(1)
        ignore_words = ~word_mask.bool()
        ignore_words[:, 0] &= word_mask.bool().any(1)
        for block in self.blocks:
            x = block(x, ignore, text, ignore_words)
        logits = self.score(x).squeeze(-1)
        return logits.masked_fill(~valid, float("-inf"))


class _ColumnStandardiser(nn.Module):
    """Each descriptor column standardised on its own, by running statistics of the real candidates
    seen in training (a masked BatchNorm without the affine: columns never mix). The statistics move
    only in a training step (train mode, gradients on): a selector called in train mode under
    ``torch.no_grad`` (an evaluation) or kept frozen while its LSMS trains keeps them."""

    def __init__(self, width: int, momentum: float = 0.02) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, features: torch.Tensor, valid: torch.Tensor, learning: bool) -> torch.Tensor:
        """``learning``: this call is a training step of the selector (update the statistics)."""
        if learning and valid.any():
            with torch.no_grad():
                real = features[valid].float()
                mean, var = real.mean(0), real.var(0, unbiased=False)
                if int(self.seen) == 0:  # the first batch sets the scale: no slow climb from (0, 1)
                    self.mean.copy_(mean)
                    self.var.copy_(var)
                else:
                    self.mean.lerp_(mean, self.momentum)
                    self.var.lerp_(var, self.momentum)
                self.seen += 1
        return (features - self.mean) / (self.var + 1e-5).sqrt()


class AdditiveSelector(nn.Module):
    """The additive selector ("additive"): a candidate's logit is a sum of one-dimensional functions,
    one per descriptor column, whose shapes the sentence sets: logit_k = b(s) + sum_j f_j(x_kj; s).
    Each f_j is piecewise linear in the standardised column (``knots`` hat functions on [-3, 3]); the
    sentence's mean word feature gives all their heights. No column meets another inside the network,
    so it cannot learn a training slice's tumours by a conjunction of their size and place: it can only
    learn, per sentence, which attributes matter and which way ("the second largest" puts weight
    on the size-rank column's value 1, "upper left" on low row and column). Comparisons come from the
    relative columns of the descriptor (ranks, differences to the slice's extremes and mean)."""

    def __init__(self, feature_dim: int, text_dim: int, hidden: int = 128, geometry_only: int | None = None,
                 knots: int = 13) -> None:
        super().__init__()
        self.geometry_only = geometry_only
        width = geometry_only or feature_dim
        self.standardise = _ColumnStandardiser(width)
        self.register_buffer("knots", torch.linspace(-3.0, 3.0, knots))
        self.shapes = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, width * knots + 1))

    def forward(self, features: torch.Tensor, valid: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> torch.Tensor:
        if self.geometry_only:
            features = features[..., -self.geometry_only:]
        learning = self.training and torch.is_grad_enabled() and self.shapes[0].weight.requires_grad
        z = self.standardise(features, valid, learning).clamp(-3.0, 3.0)  # (B,K,J)
        spacing = self.knots[1] - self.knots[0]
        hats = (1 - (z.unsqueeze(-1) - self.knots).abs() / spacing).clamp(min=0)  # (B,K,J,N): sums to 1
        sentence = sentence_feature(words, word_mask).to(z.dtype)
        heights = self.shapes(sentence)  # (B, J*N + 1)
        bias, heights = heights[:, :1], heights[:, 1:].view(z.shape[0], 1, -1)
        logits = (hats.flatten(2) * heights).sum(-1) + bias
        return logits.masked_fill(~valid, float("-inf"))


class SelectorEnsemble(nn.Module):
    """Several selectors (of one kind, or of several kinds in turn), trained side by side on the same
    batches from different random initialisations; a candidate's logit is the mean of theirs. One
    selector's choice varies with its seed by several points of hit rate (docs/model.md); the mean varies
    less and is better than most."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_logits(self, features: torch.Tensor, valid: torch.Tensor, words: torch.Tensor,
                      word_mask: torch.Tensor) -> torch.Tensor:
        """(M,B,K): each member's logits (trained each with its own loss)."""
        return torch.stack([member(features, valid, words, word_mask) for member in self.members])

    def forward(self, features: torch.Tensor, valid: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> torch.Tensor:
        return self.member_logits(features, valid, words, word_mask).mean(0)  # -inf stays -inf


def build_selector(kind: str, feature_dim: int, text_dim: int, hidden: int, geometry_only: int | None,
                   layers: int = 2, members: int = 1) -> nn.Module:
    """The selector of ``kind`` (one of SELECTOR_KINDS); ``members`` > 1: an ensemble of that many. Kinds
    joined by "+" ("film+additive") make a mixed ensemble whose members take the kinds in turn: selectors
    that read the candidates differently err on different cases, so their mean errs less (docs/model.md)."""
    kinds = kind.split("+")
    if len(kinds) > members:
        raise ValueError(f"{kind!r} mixes {len(kinds)} selector kinds: use at least {len(kinds)} members")
    if members > 1:
        return SelectorEnsemble([build_selector(kinds[i % len(kinds)], feature_dim, text_dim, hidden, geometry_only,
                                                layers) for i in range(members)])
    if kind == "film":
        return LesionSelector(feature_dim, text_dim, hidden, geometry_only)
    if kind == "attention":
        return AttentionSelector(feature_dim, text_dim, hidden, geometry_only, layers)
    if kind == "additive":
        return AdditiveSelector(feature_dim, text_dim, hidden, geometry_only)
    raise ValueError(f"unknown selector kind {kind!r}: use one of {', '.join(SELECTOR_KINDS)}")
