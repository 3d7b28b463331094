"""Variants of the additive selector measured in docs/model.md ("Tried: an additive selector") and not kept in
the product: each column also as its rank within the slice (``ranks``), and candidates that compete
(``compete``). Built by train_selectors.py from env ADDITIVE, e.g. '{"ranks": true}', '{"knots": 7}'."""
import torch
import torch.nn.functional as F
from torch import nn

from lsms_core.model.selector import AdditiveSelector
from lsms_core.selection import sentence_feature


def ranks_within_slice(features, valid):
    """(B,K,F) descriptors -> two (B,K,F): how many of the slice's real candidates have a smaller value in each
    column, and how many a larger one (/ 4, as ``selection._ranks``). Padding counts for nothing."""
    other = valid[:, None, :, None]
    x, y = features[:, :, None, :], features[:, None, :, :]
    return ((y < x) & other).sum(2).to(features.dtype) / 4, ((y > x) & other).sum(2).to(features.dtype) / 4


class RankedAdditive(nn.Module):
    """The additive selector on the geometry columns and each column's ranks from either end (3x the columns)."""

    def __init__(self, text_dim, hidden, geometry, knots):
        super().__init__()
        self.geometry = geometry
        self.inner = AdditiveSelector(3 * geometry, text_dim, hidden, None, knots)

    def forward(self, features, valid, words, word_mask):
        features = features[..., -self.geometry:]
        return self.inner(torch.cat([features, *ranks_within_slice(features, valid)], -1), valid, words, word_mask)


class CompetingAdditive(nn.Module):
    """The additive selector whose logits compete: logit - lambda(s) * (the slice's best logit - logit), with
    lambda(s) >= 0 from the sentence ("the largest" may keep one candidate, "all lesions" every one)."""

    def __init__(self, inner, text_dim, hidden):
        super().__init__()
        self.inner = inner
        self.strength = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features, valid, words, word_mask):
        logits = self.inner(features, valid, words, word_mask)  # -inf where not valid
        strength = F.softplus(self.strength(sentence_feature(words, word_mask).to(logits.dtype)))
        best = logits.amax(1, keepdim=True)
        best = best.where(valid.any(1, keepdim=True), torch.zeros_like(best))
        finite = logits.where(valid, torch.zeros_like(logits))
        return (finite - strength * (best - finite)).masked_fill(~valid, float("-inf"))


def build_additive(feature_dim, text_dim, hidden, geometry, knots=13, ranks=False, compete=False):
    """One additive selector with the named variants."""
    selector = RankedAdditive(text_dim, hidden, geometry, knots) if ranks else \
        AdditiveSelector(feature_dim, text_dim, hidden, geometry, knots)
    return CompetingAdditive(selector, text_dim, hidden) if compete else selector
