"""Referring selection: lesion candidates, their descriptors, the selector in Segmenter, and its training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from lsms_core.checkpoint import read_checkpoint
from lsms_core.inference import Segmenter
from lsms_core.lits import TUMOUR
from lsms_core.preprocessing import to_model_input
from lsms_core.referring import score_referring
from lsms_core.selection import (CLUSTER_FEATURES, GEOMETRY_FEATURES, Candidates, Matches, accepted_candidates,
                                 candidate_features, cluster_features, components, feature_dim)


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def test_components_drop_specks_and_number_the_rest():
    mask = _disc((40, 40), (10, 10), 4) | _disc((40, 40), (30, 30), 3)
    mask[2, 38] = True  # a 1-px speck
    labels = components(mask, min_area=3)
    assert labels.max() == 2 and labels[2, 38] == 0
    assert set(np.unique(labels[mask & (labels > 0)])) == {1, 2}


def test_cluster_features_see_the_fragments_of_one_tumour_as_one():
    """A tumour cut into two fragments (2 px apart) and a lone lesion larger than either fragment but
    smaller than both together: by cluster, the fragments rank first."""
    shape = (64, 64)
    left, right = _disc(shape, (20, 14), 5), _disc(shape, (20, 26), 5)  # 2-px gap between them
    lone = _disc(shape, (50, 48), 6)
    labels = np.zeros(shape, np.int32)
    labels[left], labels[right], labels[lone] = 1, 2, 3
    area = np.array([left.sum(), right.sum(), lone.sum()], np.float32)
    assert area[2] > area[0] and area[2] < area[0] + area[1]
    features = cluster_features(labels, area).numpy()
    log_area, rank, share, log_count = features.T
    assert log_area[0] == log_area[1] == 0 and log_area[2] == pytest.approx(np.log(area[2] / area[:2].sum()))
    assert list(rank) == [0.0, 0.0, 0.25] and list(log_count) == pytest.approx([np.log(2), np.log(2), 0.0])
    assert share[:2].sum() == pytest.approx(1.0) and share[2] == 1.0
    grey = np.full(shape, 0.5, np.float32)
    described = candidate_features(labels, grey, torch.zeros(8, 16, 16), clusters=True)
    assert described.shape == (3, feature_dim(8, clusters=True)) == (3, 16 + CLUSTER_FEATURES + GEOMETRY_FEATURES)
    np.testing.assert_allclose(described[:, 16:16 + CLUSTER_FEATURES].numpy(), features)
    plain = candidate_features(labels, grey, torch.zeros(8, 16, 16))
    assert torch.equal(described[:, -GEOMETRY_FEATURES:], plain[:, -GEOMETRY_FEATURES:])  # geometry stays last


def test_candidate_descriptors_rank_size_and_darkness_among_the_slice():
    grey = np.full((64, 64), 0.6, np.float32)
    big, small = _disc((64, 64), (16, 16), 8), _disc((64, 64), (48, 48), 3)
    grey[big] = 0.4  # the big one darker: 80 HU below its ring in the soft-tissue window
    grey[small] = 0.55
    labels = np.zeros((64, 64), np.int32)
    labels[big], labels[small] = 1, 2
    features = candidate_features(labels, grey, torch.randn(8, 16, 16))
    assert features.shape == (2, feature_dim(8)) == (2, 16 + GEOMETRY_FEATURES)
    geometry = features[:, 16:].numpy()
    log_area, share, row, col, contrast = geometry[:, :5].T
    assert log_area[0] > log_area[1] and share[0] == pytest.approx(big.sum() / 64 ** 2)
    assert row[0] < 0 < row[1] and col[0] < 0 < col[1]  # upper left, lower right
    assert contrast[0] == pytest.approx(-2.0, abs=1e-4) and contrast[1] == pytest.approx(-0.5, abs=1e-4)
    assert list(geometry[:, 8]) == [0.0, 0.25]  # rank from the largest
    assert list(geometry[:, 9]) == [0.25, 0.0]  # rank from the smallest
    assert list(geometry[:, 11]) == [0.0, 0.25]  # rank from the darkest
    assert candidate_features(np.zeros((8, 8), np.int32), grey[:8, :8], torch.randn(8, 4, 4)).shape == (0, 16 + 17)


def test_the_shipped_model_keeps_whole_candidates_and_follows_the_words(lits):
    """The default model (LSMS + selector) on the README's sample slice: every lesion candidate is wholly
    in or out of the answer, and two expressions naming two lesions get two different candidates (a
    regression guard of the shipped weights). "The second largest lesion" is one the selector rejects
    with every candidate: the closest match (selector_fallback) is the right lesion, and the result says so."""
    segmenter = Segmenter("default", device="cpu")
    config = segmenter.checkpoint.config
    assert config.model.select_lesions
    largest = segmenter.segment(lits.hu[100], "the largest lesion", hounsfield=True)
    found = segmenter.candidates(to_model_input(lits.hu[100], config.preprocess, True), lits.hu[100], True)
    assert found.count >= 2
    for k in range(1, found.count + 1):
        inside = largest.mask[found.labels == k]
        assert inside.all() or not inside.any()
    assert not largest.mask[found.labels == 0].any()
    encodings = segmenter.text_encodings
    lower_left = segmenter.segment(lits.hu[100], "the hypodense lesion in the lower left part of the liver",
                                   hounsfield=True)
    assert segmenter.text_encodings == encodings + 1  # the candidates pass ("all lesions") was cached
    assert largest.mask.any() and lower_left.mask.any() and not (largest.mask & lower_left.mask).any()
    rows, cols = np.nonzero(lower_left.mask)
    assert rows.mean() > 64 and cols.mean() < 64  # lower left of the image
    tumours, _ = ndimage.label(lits.labels[100] == TUMOUR, structure=np.ones((3, 3)))
    by_size = np.argsort(-np.bincount(tumours.ravel())[1:]) + 1
    assert score_referring(largest.mask, tumours, int(by_size[0])).hit
    assert config.model.selector_fallback is not None
    second = segmenter.segment(lits.hu[100], "the second largest lesion", hounsfield=True)
    assert second.notes == ["no lesion matched the words clearly: the closest match is shown"]
    assert score_referring(second.mask, tumours, int(by_size[1])).hit


def _three_candidates() -> Candidates:
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:5, 2:5], labels[10:14, 10:14], labels[16:18, 2:4] = 1, 2, 3
    return Candidates(labels, (labels > 0).astype(np.float32), torch.zeros(3, 4))


@pytest.mark.parametrize("logits, answer, steps", [
    ([-1.0, 3.0, -5.0], [1], [[1], [0], [2]]),  # one answer: then the others by score (the answer not twice)
    ([2.0, 3.0, -5.0], [0, 1], [[0, 1], [1], [0], [2]]),  # several: then each alone, best first
    ([-20.0, -30.0, -40.0], [], [[], [0], [1], [2]]),  # nothing accepted: the candidates by score
])
def test_next_match_steps_from_the_answer_through_the_candidates_by_score(logits, answer, steps):
    candidates = _three_candidates()
    accepted = accepted_candidates(np.array(logits))
    assert list(np.flatnonzero(accepted)) == answer
    matches = Matches.of(candidates, np.array(logits), accepted)
    assert [list(np.flatnonzero(c)) for c in matches.choices()] == steps
    for position, chosen in enumerate(steps):
        expected = np.isin(candidates.labels, np.array(chosen, dtype=int) + 1)
        assert np.array_equal(matches.mask(position), expected)
    assert np.array_equal(matches.mask(len(steps)), matches.mask(0))  # and round again to the answer
    assert matches.logit(0) is None and matches.logit(1) == logits[steps[1][0]]


def test_next_match_of_the_shipped_model_is_the_lesion_its_answer_missed(lits):
    """LiTS slice 96: "the second largest lesion" (tumours of 1643, 1027 and 161 px): the shipped model's
    answer (its closest match) is another lesion; one "next match" is the named one."""
    segmenter = Segmenter("default", device="cpu")
    result = segmenter.segment(lits.hu[96], "the second largest lesion", hounsfield=True)
    tumours, _ = ndimage.label(lits.labels[96] == TUMOUR, structure=np.ones((3, 3)))
    second = int(np.argsort(-np.bincount(tumours.ravel())[1:])[1]) + 1
    assert np.array_equal(result.matches.mask(0), result.mask)
    assert not score_referring(result.mask, tumours, second).hit
    assert score_referring(result.matches.mask(1), tumours, second).hit
    assert result.matches.logit(1) < 0  # ranked below what the fallback kept


def test_a_model_without_a_selector_has_no_matches(tiny_checkpoint, lits):
    segmenter = Segmenter(tiny_checkpoint, device="cpu")
    assert segmenter.model.selector is None
    assert segmenter.segment(lits.hu[96], "the second largest lesion", hounsfield=True).matches is None


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "s"
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "build-synth", str(root), "--train", "40",
                           "--val", "6", "--test", "0", "--seed", "3"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return root


def test_selector_training_learns_to_pick_the_named_lesion(small_synth, tmp_path):
    """On the shipped LSMS, the selector learns from 40 synthetic slices to point at the lesion the
    words name on them (its own training data: this is a learnability check, the held-out figures
    are in the model card)."""
    from lsms_core.dataset import AnnotationDataset
    from training.evaluate import evaluate

    done = subprocess.run([sys.executable, "-m", "training.selector_cli", str(small_synth), "--checkpoint", "default",
                           "-o", str(tmp_path / "run"), "--epochs", "150", "--thresholds", "0.4", "0.5",
                           "--no-progress"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log][:2] == ["start", "epoch"] and log[-1]["event"] == "end"
    slices = {r["image"] for r in AnnotationDataset.open(small_synth).select("train")}
    assert log[0]["train_slices"] == 2 * len(slices) and log[0]["thresholds"] == [0.4, 0.5]  # one per threshold
    stored = read_checkpoint(tmp_path / "run" / "best.safetensors")
    assert stored.config.model.select_lesions and stored.extra["base"]["name"] == "lsms-reflits"
    # each epoch chose its closest-match fallback on validation; the last checkpoint carries the last epoch's
    epochs = [r for r in log if r["event"] == "epoch"]
    assert all(r["fallback_table"][0]["fallback"] is None for r in epochs)
    assert read_checkpoint(tmp_path / "run" / "last.safetensors").config.model.selector_fallback == epochs[-1]["fallback"]
    report = evaluate(str(tmp_path / "run" / "last.safetensors"), str(small_synth), split="train")
    neutral = evaluate(str(tmp_path / "run" / "last.safetensors"), str(small_synth), split="train",
                       text_mode="neutral")
    assert report["n_referring"] > 50
    # the words, not the image, choose (measured: hit 0.45 as written, 0.25 neutral)
    assert report["hit_rate"] > neutral["hit_rate"] + 0.1 and report["pointing"] > neutral["pointing"]
    again = subprocess.run([sys.executable, "-m", "training.selector_cli", str(small_synth), "--checkpoint", "default",
                            "-o", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert AnnotationDataset.open(small_synth)  # the dataset is untouched
