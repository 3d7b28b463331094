"""Referring metrics (lsms_core.referring) on hand-made cases, and through lsms-eval."""

from __future__ import annotations

import numpy as np
import pytest

from lsms_core.referring import (ReferringScores, instance_map, named_instance, referring_instances,
                                 score_referring)


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


@pytest.fixture
def two_lesions():
    """A 64x64 slice with two equal discs (instances 1 and 2) and its instance map."""
    left, right = _disc((64, 64), (32, 16), 6), _disc((64, 64), (32, 48), 6)
    return left, right, instance_map([left, right, left | right], [None, None, None])


def test_mask_on_the_wrong_lesion_scores_no_hit_and_no_pointing(two_lesions):
    left, right, labels = two_lesions
    named = named_instance(left, labels)
    outcome = score_referring(right, labels, named)
    assert (outcome.hit, outcome.pointing, outcome.leak) == (False, False, 1.0)


def test_mask_on_the_named_lesion_is_a_hit(two_lesions):
    left, _, labels = two_lesions
    outcome = score_referring(left, labels, named_instance(left, labels))
    assert (outcome.hit, outcome.pointing, outcome.leak) == (True, True, 0.0)


def test_two_lesions_half_each_leak_half(two_lesions):
    left, right, labels = two_lesions
    outcome = score_referring(left | right, labels, named_instance(left, labels))
    assert outcome.leak == pytest.approx(0.5)
    assert not outcome.pointing and not outcome.hit  # a tie is not pointing at the named lesion


def test_pointing_without_hit_when_the_overlap_is_small(two_lesions):
    left, right, labels = two_lesions
    small_part = left & _disc((64, 64), (32, 16), 2)  # 13 of 113 px: most pixels, IoU far below 0.5
    outcome = score_referring(small_part, labels, named_instance(left, labels))
    assert outcome.pointing and not outcome.hit and outcome.leak == 0.0


def test_empty_prediction_misses_without_leak(two_lesions):
    left, _, labels = two_lesions
    outcome = score_referring(np.zeros_like(left), labels, named_instance(left, labels))
    assert (outcome.hit, outcome.pointing, outcome.leak) == (False, False, 0.0)


def test_stored_instance_numbers_separate_touching_lesions():
    """Two lesions that touch are one connected component; their instance numbers keep them apart."""
    upper = np.zeros((20, 20), bool)
    upper[5:10, 5:15] = True
    lower = np.zeros((20, 20), bool)
    lower[10:15, 5:15] = True
    assert instance_map([upper | lower], [None]).max() == 1
    labels = instance_map([upper, lower, upper | lower], [0, 1, None])
    assert labels.max() == 2 and named_instance(upper, labels) != named_instance(lower, labels)


def test_referring_cases_need_two_instances_and_one_named():
    one = _disc((32, 32), (10, 10), 4)
    other = _disc((32, 32), (22, 22), 4)
    records = [{"id": "a", "image": "x", "mask": one}, {"id": "b", "image": "x", "mask": one | other},
               {"id": "c", "image": "y", "mask": one}]  # slice y has a single lesion
    cases = referring_instances(records, lambda r: r["mask"])
    assert set(cases) == {"a"}  # "all lesions" names no single one; y has nothing to choose from


def test_scores_summary_overall_and_per_kind(two_lesions):
    left, right, labels = two_lesions
    scores = ReferringScores()
    scores.add(score_referring(left, labels, 1), ["size"])
    scores.add(score_referring(right, labels, 1), ["size", "position"])
    assert scores.summary() == {"hit_rate": 0.5, "pointing": 0.5, "leak": 0.5, "n_referring": 2}
    assert scores.kind_summary("position")["hit_rate"] == 0.0
    assert scores.kind_summary("density") == {"hit_rate": None, "pointing": None, "leak": None, "n_referring": 0}
