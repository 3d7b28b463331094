"""The closest match: when the selector accepts no candidate, the best one is kept if its logit
clears the model's ``selector_fallback``, which lsms-train-selector chooses on validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lsms_core.checkpoint import read_checkpoint
from lsms_core.config import ConfigError, ModelConfig
from lsms_core.selection import Candidates, accepted_candidates
from training.selector_training import Expression, SliceSamples, calibrate_fallback, score_selection


def test_accepted_candidates_keep_the_positive_ones_else_the_closest_match():
    assert accepted_candidates(np.array([2.0, -1.0, 0.5]), -5.0).tolist() == [True, False, True]
    # none positive: the best one, if it clears the fallback
    assert accepted_candidates(np.array([-7.0, -3.0, -9.0]), -5.0).tolist() == [False, True, False]
    assert accepted_candidates(np.array([-7.0, -6.0, -9.0]), -5.0).tolist() == [False, False, False]
    assert accepted_candidates(np.array([-7.0, -3.0, -9.0]), None).tolist() == [False, False, False]
    assert accepted_candidates(np.zeros(0), -5.0).tolist() == []


def _two_lesion_slice() -> tuple[SliceSamples, np.ndarray]:
    """A 12x12 slice with two lesions, each exactly one candidate; one expression names lesion 1, one
    names a lesion that is not there (empty mask)."""
    instances = np.zeros((12, 12), dtype=np.int32)
    instances[1:5, 1:5] = 1
    instances[7:10, 7:10] = 2
    candidates = Candidates(instances.copy(), np.zeros((12, 12), np.float32), torch.zeros(2, 4))
    named = Expression("the largest lesion", torch.tensor([1.0, 0.0]), instances == 1, 1, True)
    absent = Expression("the hyperdense lesion", torch.zeros(2), np.zeros((12, 12), bool), None, True)
    return SliceSamples(candidates, instances, [named, absent]), instances


def test_calibration_keeps_the_closest_match_only_as_far_as_validation_rewards_it():
    slice_, _ = _two_lesion_slice()
    # the selector rejects both candidates for both expressions, but ranks the named lesion first
    logits = [[np.array([-3.5, -9.0]), np.array([-12.0, -20.0])]]
    without = score_selection([slice_], logits, None)
    assert without["hit_rate"] == 0.0
    chosen, table = calibrate_fallback([slice_], logits)
    # -4 is the most cautious fallback that keeps the named lesion; below -12 the absent lesion's
    # expression would get a lesion too
    assert chosen == -4.0
    assert score_selection([slice_], logits, chosen)["hit_rate"] == 1.0
    by_fallback = {row["fallback"]: row for row in table}
    assert by_fallback[-12.0]["dice"] < by_fallback[-4.0]["dice"]
    # a selector that already answers needs no fallback: the earliest (None) wins the tie
    assert calibrate_fallback([slice_], [[np.array([1.0, -9.0]), np.array([-12.0, -20.0])]])[0] is None


def test_selector_fallback_is_validated_and_old_checkpoints_have_none():
    assert ModelConfig().selector_fallback is None
    assert ModelConfig(selector_fallback=-15.0).validate().selector_fallback == -15.0
    for bad in (1.0, "auto", True, float("nan")):
        with pytest.raises(ConfigError, match="selector_fallback"):
            ModelConfig(selector_fallback=bad).validate()


def test_calibrate_only_rewrites_the_fallback_and_keeps_the_weights(tmp_path):
    from training.data_cli import main as data_main

    synth = tmp_path / "synth"
    assert data_main(["build-synth", str(synth), "--train", "0", "--val", "6", "--test", "0", "--seed", "3"]) == 0
    run = tmp_path / "run"
    command = [sys.executable, "-m", "training.selector_cli", str(synth), "--checkpoint", "default", "-o", str(run),
               "--calibrate-only", "--half-checkpoints", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((run / "log.jsonl").read_text())
    assert record["event"] == "calibration" and record["val_slices"] == 6
    assert [row["fallback"] for row in record["table"]][0] is None and len(record["table"]) > 5
    stored, default = read_checkpoint(run / "calibrated.safetensors"), read_checkpoint("default")
    assert stored.config.model.selector_fallback == record["fallback"]
    assert stored.extra["calibration"]["fallback"] == record["fallback"]
    for name, tensor in default.model_state.items():
        assert torch.equal(stored.model_state[name], tensor), name
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "training.selector_cli", str(synth), "--checkpoint", "default",
                          "-o", str(run), "--fallback", "3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "between -1000 and 0" in bad.stderr


def test_the_listwise_term_rewards_ranking_the_named_candidate_first():
    from training.selector_training import selector_loss

    valid = torch.tensor([[True, True, True, False]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    named_second = torch.tensor([[-3.0, -1.0, -8.0, float("-inf")]], requires_grad=True)
    named_first = torch.tensor([[-1.0, -3.0, -8.0, float("-inf")]])
    # the term is -log softmax(logits)[named] over the real candidates (the padding slot takes no share)
    ranking_cost = (selector_loss(named_second, valid, target, 1.0) - selector_loss(named_second, valid, target, 0.0)).detach()
    assert float(ranking_cost) == pytest.approx(-torch.log_softmax(torch.tensor([-3.0, -1.0, -8.0]), 0)[0].item(), abs=1e-5)
    assert selector_loss(named_first, valid, target, 1.0) < selector_loss(named_second, valid, target, 1.0)
    selector_loss(named_second, valid, target, 1.0).backward()
    assert named_second.grad[0, 0] < 0 < named_second.grad[0, 1]  # raise the named one, lower its rival
    # a row that names no found lesion (an absent one) adds no ranking term
    absent = torch.zeros(1, 4)
    assert selector_loss(named_second.detach(), valid, absent, 1.0) == pytest.approx(
        float(selector_loss(named_second.detach(), valid, absent, 0.0)))
