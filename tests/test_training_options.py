"""lsms-train's options for chest data: the neutral-text share, left-right flips only, and the progress events a
run without a terminal writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lsms_core.config import PreprocessConfig
from lsms_core.dataset import AnnotationDataset
from training.config import TrainConfig
from training.data import NEUTRAL_TEXT, ReferringSamples, augment_sample
from training.trainer import Trainer, format_duration


@pytest.fixture
def two_kinds(tmp_path, rng):
    """20 slices, each with one instance-less line (the whole finding) and one line naming instance 0."""
    dataset = AnnotationDataset.create(tmp_path / "ds", modality="DX")
    for i in range(20):
        image = rng.integers(0, 256, (32, 32)).astype(np.uint8)
        mask = np.zeros((32, 32), bool)
        mask[4:12, 4:12] = mask[20:28, 20:28] = True
        part = np.zeros_like(mask)
        part[4:12, 4:12] = True
        common = {"split_group": f"p{i}", "split": "train" if i < 16 else "val", "modality": "DX", "units": "raw"}
        dataset.add(image, mask, "bilateral infection", **common)
        dataset.add(image, part, "the infection in the right lung", instance=0, **common)
    return dataset


def test_the_neutral_share_replaces_only_whole_finding_words(two_kinds):
    prep = PreprocessConfig(image_size=32)
    samples = ReferringSamples(two_kinds, "train", prep, neutral_share=0.5, seed=3)
    texts = {}
    for epoch in range(4):
        samples.epoch = epoch
        for index in range(len(samples)):
            texts.setdefault(samples.records[index]["text"], []).append(samples[index].text)
    whole, side = texts["bilateral infection"], texts["the infection in the right lung"]
    assert 0.3 < np.mean([t == NEUTRAL_TEXT for t in whole]) < 0.7
    assert set(side) == {"the infection in the right lung"}  # a line naming one instance keeps its words
    plain = ReferringSamples(two_kinds, "train", prep)
    assert {plain[i].text for i in range(len(plain))} == {"bilateral infection", "the infection in the right lung"}


def test_without_vertical_flips_the_image_is_never_upside_down():
    grey = torch.zeros(1, 16, 16)
    grey[:, :4] = 1.0  # a bright top band
    target = torch.zeros(1, 16, 16)
    for seed in range(40):
        out, _, text = augment_sample(grey, target, "the upper zone", torch.Generator().manual_seed(seed),
                                      vertical_flips=False)
        assert out[:, :3].mean() > out[:, -3:].mean() and text == "the upper zone"
    flipped = [augment_sample(grey, target, "the upper zone", torch.Generator().manual_seed(s))[2] for s in range(40)]
    assert "the lower zone" in flipped  # the default still flips (and swaps the words)


def test_a_run_without_a_terminal_logs_progress_with_rate_and_time_left(two_kinds, tmp_path, monkeypatch, capsys):
    import training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PROGRESS_EVERY", 2)
    config = TrainConfig(dataset=str(two_kinds.root), output=str(tmp_path / "run"), preset="lsms-tiny",
                         image_size=64, epochs=1, batch_size=4, lr=1e-3, neutral_share=0.25, vertical_flips=False)
    Trainer(config, show_progress=True).run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    progress = [r for r in log if r["event"] == "progress"]
    assert [r["iteration"] for r in progress] == [2, 4, 6, 8]
    assert all(r["images_per_s"] > 0 and r["eta_s"] >= 0 for r in progress) and progress[-1]["eta_s"] == 0
    assert "samples/s, about" in capsys.readouterr().err
    assert log[0]["config"]["neutral_share"] == 0.25 and log[0]["config"]["vertical_flips"] is False


def test_durations_read_as_a_person_would_say_them():
    assert format_duration(20) == "< 1 min" and format_duration(7 * 60) == "7 min"
    assert format_duration(65 * 60) == "1 h 05 min"


def test_the_cli_refuses_a_neutral_share_outside_0_to_1(two_kinds, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "training.train_cli", str(two_kinds.root), "-o", str(tmp_path / "r"),
                           "--neutral-share", "1.5", "--preset", "lsms-tiny", "--image-size", "64"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--neutral-share must be a finite number >= 0 and <= 1" in done.stderr
    assert not (tmp_path / "r" / "log.jsonl").exists()


def test_worker_processes_give_the_same_batches(two_kinds, tmp_path):
    """Samples are a function of (seed, epoch, index): read by 2 worker processes or in the training process,
    the first epoch's losses agree."""
    losses = []
    for workers in (0, 2):
        config = TrainConfig(dataset=str(two_kinds.root), output=str(tmp_path / f"w{workers}"), preset="lsms-tiny",
                             image_size=64, epochs=1, batch_size=4, lr=1e-3, augment=True, workers=workers)
        Trainer(config, show_progress=False).run()
        log = [json.loads(line) for line in (tmp_path / f"w{workers}" / "log.jsonl").read_text().splitlines()]
        losses.append(next(r for r in log if r["event"] == "epoch")["train_total"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
