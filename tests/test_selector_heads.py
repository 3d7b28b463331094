"""The lesion selector heads (lsms_core/model/selector.py): one call for all, candidates scored
independently of their order, padding (of candidates and of words) never changes a score, rows with no
candidate give no answer, the attention head reads single words that the mean of the words blurs, and the
additive head is additive, learns rules that hold on new slices and keeps its statistics outside training."""

from __future__ import annotations

import pytest
import torch

from lsms_core.model.selector import (AdditiveSelector, AttentionSelector, LesionSelector, SelectorEnsemble,
                                      build_selector)
from lsms_core.selection import GEOMETRY_FEATURES


def _inputs(generator, batch=2, count=5, words=7, feature=GEOMETRY_FEATURES, text=12):
    features = torch.randn(batch, count, feature, generator=generator)
    valid = torch.ones(batch, count, dtype=torch.bool)
    text_features = torch.randn(batch, words, text, generator=generator)
    word_mask = torch.ones(batch, words, dtype=torch.bool)
    return features, valid, text_features, word_mask


@pytest.mark.parametrize("kind", ["film", "attention", "additive"])
def test_scores_follow_the_candidates_and_ignore_padding(kind):
    generator = torch.Generator().manual_seed(0)
    selector = build_selector(kind, 40, 12, 32, GEOMETRY_FEATURES).eval()
    features, valid, words, word_mask = _inputs(generator)
    with torch.no_grad():
        logits = selector(features, valid, words, word_mask)
        order = torch.tensor([3, 0, 4, 1, 2])
        shuffled = selector(features[:, order], valid, words, word_mask)
        assert torch.allclose(shuffled, logits[:, order], atol=1e-5)  # no candidate order is learnt
        padded_valid = torch.cat([valid, torch.zeros(2, 3, dtype=torch.bool)], 1)
        padded = selector(torch.cat([features, torch.randn(2, 3, GEOMETRY_FEATURES) * 100], 1), padded_valid,
                          torch.cat([words, torch.randn(2, 4, 12) * 100], 1),
                          torch.cat([word_mask, torch.zeros(2, 4, dtype=torch.bool)], 1))
    assert torch.allclose(padded[:, :5], logits, atol=1e-5)
    assert torch.isinf(padded[:, 5:]).all() and (padded[:, 5:] < 0).all()


@pytest.mark.parametrize("kind", ["film", "attention", "additive"])
def test_a_slice_without_candidates_gives_no_answer_and_no_nan(kind):
    generator = torch.Generator().manual_seed(1)
    selector = build_selector(kind, 40, 12, 32, GEOMETRY_FEATURES).eval()
    features, valid, words, word_mask = _inputs(generator)
    valid[1] = False
    with torch.no_grad():
        logits = selector(features, valid, words, word_mask)
    assert torch.isfinite(logits[0]).all() and (logits[1] == float("-inf")).all()


def test_an_ensemble_averages_its_members_and_trains_each_of_them():
    from training.selector_training import selector_loss

    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    ensemble = build_selector("film", 40, 12, 32, GEOMETRY_FEATURES, members=3)
    assert isinstance(ensemble, SelectorEnsemble) and len(ensemble.members) == 3
    features, valid, words, word_mask = _inputs(generator)
    valid[0, 4] = False
    with torch.no_grad():
        each = [member(features, valid, words, word_mask) for member in ensemble.members]
        mean = ensemble(features, valid, words, word_mask)
    assert torch.allclose(mean[valid], torch.stack(each).mean(0)[valid]) and mean[0, 4] == float("-inf")
    assert not torch.allclose(each[0][valid], each[1][valid])  # different initialisations
    before = [m.score[-1].weight.clone() for m in ensemble.members]
    target = torch.zeros(2, 5)
    target[:, 1] = 1
    optimiser = torch.optim.SGD(ensemble.parameters(), lr=0.1)
    members = ensemble.member_logits(features, valid, words, word_mask)
    torch.stack([selector_loss(logits, valid, target) for logits in members]).mean().backward()
    optimiser.step()
    assert all(not torch.equal(m.score[-1].weight, b) for m, b in zip(ensemble.members, before))


def test_build_selector_names_the_kinds():
    assert isinstance(build_selector("film", 40, 12, 32, None), LesionSelector)
    assert isinstance(build_selector("attention", 40, 12, 32, None, layers=3), AttentionSelector)
    assert isinstance(build_selector("additive", 40, 12, 32, None), AdditiveSelector)
    with pytest.raises(ValueError, match="film, attention, additive"):
        build_selector("transformer", 40, 12, 32, None)


def test_a_mixed_ensemble_takes_the_kinds_in_turn_and_needs_a_member_per_kind():
    from lsms_core.config import ConfigError, ModelConfig
    from training.selector_cli import build_parser

    mixed = build_selector("film+additive", 40, 12, 32, GEOMETRY_FEATURES, members=4)
    assert [type(m) for m in mixed.members] == [LesionSelector, AdditiveSelector] * 2
    with pytest.raises(ValueError, match="at least 2 members"):
        build_selector("film+additive", 40, 12, 32, GEOMETRY_FEATURES, members=1)
    with pytest.raises(ConfigError, match="selector_members must be at least 2"):
        ModelConfig(select_lesions=True, selector_kind="film+additive").validate()
    with pytest.raises(ConfigError, match="'film', 'attention' or 'additive'"):
        ModelConfig(select_lesions=True, selector_kind="film+mlp", selector_members=2).validate()
    assert build_parser().parse_args(["d", "--checkpoint", "c", "-o", "o", "--kind", "film+additive"]).kind \
        == "film+additive"


def test_the_attention_head_learns_a_word_the_mean_of_the_words_hides():
    """Two sentences whose mean word feature is identical (the same words in another order, the
    order carried only by which word sits next to a marker) name different candidates: the
    FiLM head reads the mean and cannot tell them apart; the attention head, reading each word, can.
    Words here are one-hot; word 0 = "second", 1 = "largest", 2 = marker: "second largest" sets
    the marker on 'second', "largest" on 'largest'."""
    torch.manual_seed(0)
    count, text = 3, 6
    features = torch.zeros(2, count, GEOMETRY_FEATURES)
    features[:, :, 0] = torch.tensor([3.0, 2.0, 1.0])  # log areas: candidate 0 largest, 1 second
    features[:, torch.arange(count), torch.arange(count) + 1] = 1.0  # (normalised alone, a lone area is lost)
    valid = torch.ones(2, count, dtype=torch.bool)
    words = torch.zeros(2, 2, text)
    words[0, 0, 0] = words[0, 0, 2] = 1  # "second"+marker, "largest"
    words[0, 1, 1] = 1
    words[1, 0, 0] = 1  # "second", "largest"+marker
    words[1, 1, 1] = words[1, 1, 2] = 1
    word_mask = torch.ones(2, 2, dtype=torch.bool)
    target = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    results = {}
    for kind in ("film", "attention"):
        selector = build_selector(kind, GEOMETRY_FEATURES, text, 32, GEOMETRY_FEATURES)
        optimiser = torch.optim.Adam(selector.parameters(), lr=3e-3)
        for _ in range(200):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                selector(features, valid, words, word_mask), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        selector.eval()
        with torch.no_grad():
            results[kind] = (selector(features, valid, words, word_mask) > 0).float()
    assert torch.equal(results["attention"], target)
    assert torch.equal(results["film"][0], results["film"][1])  # the same mean: the same answer


def test_the_additive_head_sums_one_function_per_column():
    """Changing two descriptor columns moves a candidate's logit by the sum of what changing each
    alone moves it: no column meets another, whatever the sentence."""
    generator = torch.Generator().manual_seed(3)
    selector = build_selector("additive", 40, 12, 32, GEOMETRY_FEATURES)
    features, valid, words, word_mask = _inputs(generator, feature=40)
    selector(features, valid, words, word_mask)  # one training-mode call sets the column statistics
    selector.eval()
    geometry = 40 - GEOMETRY_FEATURES
    a, b = features.clone(), features.clone()
    a[..., geometry + 2] += 0.7
    b[..., geometry + 9] -= 0.4
    both = a.clone()
    both[..., geometry + 9] -= 0.4
    with torch.no_grad():
        base, only_a, only_b, together = (selector(x, valid, words, word_mask) for x in (features, a, b, both))
    assert not torch.allclose(only_a, base, atol=1e-3) and not torch.allclose(only_b, base, atol=1e-3)
    assert torch.allclose(together - base, (only_a - base) + (only_b - base), atol=1e-5)


def test_the_additive_head_picks_by_rank_on_slices_it_never_saw():
    """Two sentences, "largest" (one-hot word 0) and "second largest" (word 1), on slices of 2-6
    candidates whose raw areas vary from slice to slice: trained on 200 slices, it picks the named
    candidate on >= 95 % of 200 new ones (it can only have learnt the rank column's shape)."""
    torch.manual_seed(0)

    def slices(count, seed):
        generator = torch.Generator().manual_seed(seed)
        features = torch.zeros(count, 6, GEOMETRY_FEATURES)
        valid = torch.zeros(count, 6, dtype=torch.bool)
        target = torch.zeros(count, 6)
        words = torch.zeros(count, 1, 4)
        for row in range(count):
            k = int(torch.randint(2, 7, (1,), generator=generator))
            area = torch.rand(k, generator=generator) * 6 + 1
            rank = torch.argsort(torch.argsort(-area)).float()  # 0 for the largest
            features[row, :k, 0] = area.log()
            features[row, :k, 8] = rank / 4
            features[row, :k, 2:4] = torch.randn(k, 2, generator=generator)  # distractors
            valid[row, :k] = True
            second = row % 2 == 1
            words[row, 0, int(second)] = 1
            target[row, :k] = (rank == int(second)).float()
        return features, valid, words, torch.ones(count, 1, dtype=torch.bool), target

    features, valid, words, word_mask, target = slices(200, 0)
    selector = build_selector("additive", GEOMETRY_FEATURES, 4, 32, GEOMETRY_FEATURES)
    optimiser = torch.optim.Adam(selector.parameters(), lr=1e-2)
    for _ in range(300):
        logits = selector(features, valid, words, word_mask)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], target[valid])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    selector.eval()
    features, valid, words, word_mask, target = slices(200, 1)
    with torch.no_grad():
        logits = selector(features, valid, words, word_mask)
    picked = logits.argmax(1)
    right = target[torch.arange(200), picked] == 1
    assert right.float().mean() >= 0.95


def test_the_additive_heads_statistics_move_only_in_a_training_step():
    generator = torch.Generator().manual_seed(4)
    selector = build_selector("additive", 40, 12, 32, GEOMETRY_FEATURES)
    features, valid, words, word_mask = _inputs(generator, feature=40)
    selector(features, valid, words, word_mask)  # a training step's forward: sets them
    learnt = selector.standardise.mean.clone()
    shifted = features + 5
    with torch.no_grad():
        selector(shifted, valid, words, word_mask)  # train mode, no gradients: an evaluation
    selector.requires_grad_(False)
    selector(shifted, valid, words, word_mask)  # frozen while something else trains
    assert torch.equal(selector.standardise.mean, learnt)
    selector.requires_grad_(True)
    selector(shifted, valid, words, word_mask)
    assert not torch.equal(selector.standardise.mean, learnt)
