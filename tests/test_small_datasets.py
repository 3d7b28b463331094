"""Small datasets (issue 11, item 4): one patient must still train, and the tools say what is missing.

Train 1 / val 0 / test 3 trained but wrote no best.safetensors (the training-loss pick started below any
loss over 1), so the widget's "Use new model" never enabled; an empty train split said only "has no
annotations in split 'train'"; ``lsms-data validate`` called such datasets valid without a word.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lsms_core.checkpoint import read_checkpoint
from lsms_core.dataset import AnnotationDataset, DatasetError
from training.config import TrainConfig
from training.data_cli import main as data_main
from training.trainer import Trainer

WINDOW = {"center": 50.0, "width": 400.0, "name": "soft tissue"}


def _lesion_slice(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A soft-tissue slice (HU) with one round hypodense lesion, and its mask; (size, size)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(60.0, 10.0, (size, size)).astype(np.float32)
    rows, cols = np.mgrid[:size, :size]
    centre = rng.integers(20, size - 20, 2)
    mask = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= rng.integers(36, 100)
    image[mask] -= 40.0
    return image, mask


def _dataset(root, splits: dict[str, int]) -> AnnotationDataset:
    """``splits``: annotations per split, each split one patient (group ``p-<split>``)."""
    dataset = AnnotationDataset.create(root, window=WINDOW)
    seed = 0
    for split, count in splits.items():
        for _ in range(count):
            image, mask = _lesion_slice(seed)
            dataset.add(image, mask, "the largest lesion", split=split, split_group=f"p-{split}", modality="CT",
                        units="HU", window=WINDOW, expression_kinds=["size"])
            seed += 1
    return dataset


def _config(root, output, **kw) -> TrainConfig:
    values = dict(dataset=str(root), output=str(output), preset="lsms-tiny", image_size=64, epochs=2, batch_size=2,
                  lr=1e-3, model_name="small")
    return TrainConfig(**{**values, **kw})


def test_an_empty_validation_split_trains_and_writes_best_picked_by_training_loss(tmp_path, capsys):
    root = tmp_path / "one-patient"
    _dataset(root, {"train": 2, "test": 3})
    # A contrastive weight of 10 keeps the loss above 1, where the old pick (-loss > -1) never chose an epoch.
    summary = Trainer(_config(root, tmp_path / "run", contrastive_weight=10.0), show_progress=False).run()
    err = capsys.readouterr().err
    assert "lsms-train: note: no validation possible: split 'val' has no annotations" in err
    assert "lowest training loss" in err
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    notes = [r["message"] for r in log if r["event"] == "note"]
    assert len(notes) == 1 and "no validation possible" in notes[0]
    epochs = [r for r in log if r["event"] == "epoch"]
    assert all("val_dice" not in r for r in epochs) and min(r["train_total"] for r in epochs) > 1
    assert summary["best_by"] == "training loss" and summary["best_dice"] is None
    best_epoch = min(epochs, key=lambda r: r["train_total"])["epoch"]
    assert summary["best_epoch"] == best_epoch
    assert summary["best_train_loss"] == pytest.approx(min(r["train_total"] for r in epochs))
    best = read_checkpoint(tmp_path / "run" / "best.safetensors")
    assert best.extra["best_by"] == "training loss" and best.extra["epoch"] == best_epoch and best.extra["val"] is None


def test_an_empty_train_split_says_what_to_do_and_set_split_fixes_it(tmp_path):
    root = tmp_path / "no-train"
    _dataset(root, {"val": 1, "test": 2})
    with pytest.raises(DatasetError) as error:
        Trainer(_config(root, tmp_path / "run"), show_progress=False)
    message = str(error.value)
    assert "has no annotations in split 'train'" in message
    assert "annotations per split: train 0, val 1, test 2; patients: train 0, val 1, test 1" in message
    assert f"lsms-data set-split {root} p-test train" in message and "annotate more patients" in message
    assert not (tmp_path / "run" / "log.jsonl").exists()

    assert data_main(["set-split", str(root), "p-test", "train"]) == 0
    dataset = AnnotationDataset.open(root)
    assert [r["split"] for r in dataset.records] == ["val", "train", "train"]
    trainer = Trainer(_config(root, tmp_path / "run"), show_progress=False)
    assert len(trainer.train_samples) == 2 and len(trainer.val_samples) == 1


def test_validate_warns_about_empty_splits_and_counts_patients(tmp_path, capsys):
    root = tmp_path / "one-patient"
    _dataset(root, {"train": 1, "test": 3})
    assert data_main(["validate", str(root)]) == 0  # a warning, not a failure
    out = capsys.readouterr().out
    assert "warning: split 'val' is empty: lsms-train cannot validate" in out
    assert "lsms-data set-split DATASET GROUP val" in out
    assert "split 'train' is empty" not in out and "split 'test' is empty" not in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["train"], ["val"],
                                                                                                  ["test"])}
    assert rows == {"train": ["1", "1", "1"], "val": ["0", "0", "0"], "test": ["3", "1", "1"]}
    assert f"{root}: valid, 4 annotations (1 warning(s))" in out

    assert data_main(["validate", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["splits"]["test"] == {"annotations": 3, "patients": 1, "groups": 1}
    assert [w for w in report["warnings"] if "is empty" in w] == [next(w for w in report["warnings"] if "'val'" in w)]
