"""Nothing lost: a process saving annotations is SIGKILLed at random points, again and again.

A child process saves annotations into one dataset through lsms_core's writer, the way the
widget's save does (``AnnotationDataset.create(..., exist_ok=True).add(...)`` per save), and
reports an id to a side file only after ``add`` returned. After every kill the dataset must
validate (a torn last line is only a warning, as docs/dataset-format.md says) and every
reported annotation must be there with exactly the mask, proposal and image it was given.

Two processes appending at once: tests/test_dataset.py::test_two_processes_appending_at_once_lose_no_line.
``lsms-train`` killed and resumed: tests/test_training.py::test_killed_run_resumes_on_the_same_schedule.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.store import encode_mask_png
from lsms_core.dataset.validate import validate_dataset

KILLS = 25
SIZE = 96

# The child: saves annotation after annotation until killed. Annotation ``seed`` is rebuilt
# by the parent from the seed alone (``_sample``), so the parent knows what each one holds.
CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[4])
from test_kill_saves import WINDOW, _sample
from lsms_core.dataset import AnnotationDataset

root, report, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, b"ready\n")
seed = first
while True:
    image, mask, proposal, group = _sample(seed)
    dataset = AnnotationDataset.create(root, exist_ok=True, window=WINDOW)
    dataset.add(image, mask, f"lesion number {seed}", split_group=group, modality="CT", units="HU",
                window=WINDOW, spacing_mm=(0.8, 0.8), proposal=proposal, annotation_id=f"kill-{seed:06d}",
                source={"frame": None})
    os.write(fd, f"saved {seed}\n".encode())  # only once add() returned
    seed += 1
"""

WINDOW = {"center": 50.0, "width": 400.0, "name": "soft tissue"}


def _sample(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(image, mask, proposal or None, split group) of annotation ``seed``; a new slice every third one, a new
    group every sixth (a slice stays in one group, so in one split: the validator calls the same slice in two
    splits leakage)."""
    rng = np.random.default_rng(seed)
    image = np.random.default_rng(seed // 3).integers(-1000, 1000, (SIZE, SIZE)).astype(np.float32)
    mask = rng.random((SIZE, SIZE)) < 0.2
    proposal = (rng.random((SIZE, SIZE)) < 0.2) if seed % 2 else None
    return image, mask, proposal, f"p-{seed // 6:04d}"


def _reported(report: Path) -> list[int]:
    """Seeds the child said were saved (complete lines only: the kill may cut the last one)."""
    data = report.read_bytes() if report.exists() else b""
    lines = data[: data.rfind(b"\n") + 1].decode().splitlines()
    return [int(line.split()[1]) for line in lines if line.startswith("saved ")]


def _check_intact(root: Path, seeds: list[int]) -> AnnotationDataset:
    errors = [str(p) for p in validate_dataset(root, deep=True) if p.severity == "error"]
    assert errors == [], errors
    dataset = AnnotationDataset.open(root)
    by_id = {record["id"]: record for record in dataset.records}
    assert len(by_id) == len(dataset.records), "duplicate ids"
    for seed in seeds:
        record = by_id.get(f"kill-{seed:06d}")
        assert record is not None, f"annotation {seed} was reported saved but is gone"
        image, mask, proposal, group = _sample(seed)
        assert (root / record["mask"]).read_bytes() == encode_mask_png(mask)
        np.testing.assert_array_equal(dataset.read_mask(record), mask)
        np.testing.assert_array_equal(dataset.read_image(record), image)
        if proposal is not None:
            np.testing.assert_array_equal(dataset.read_mask(record, "proposal"), proposal)
        assert record["text"] == f"lesion number {seed}" and record["split_group"] == group
    return dataset


def test_sigkill_at_random_points_loses_no_saved_annotation(tmp_path):
    root, report = tmp_path / "annotations", tmp_path / "saved.txt"
    rng = random.Random(20261128)
    saved: list[int] = []
    torn = mid_save = 0
    next_seed = 0
    for kill in range(KILLS):
        report.unlink(missing_ok=True)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(report), str(next_seed),
                                  str(Path(__file__).parent)])
        deadline = time.monotonic() + 60
        while not report.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.005)
        assert child.poll() is None, f"the saving process died on its own (exit {child.returncode})"
        # Kill at once sometimes (inside create/open), mostly after some saves.
        time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.05), rng.uniform(0.05, 0.5)]))
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL, "the child ended before it was killed"
        saved += _reported(report)
        next_seed = (kill + 1) * 10_000  # never reuse a seed: a killed save may have written its id
        dataset = _check_intact(root, saved) if (root / "dataset.json").exists() else None
        torn += bool(dataset and dataset.torn_tail)
        mid_save += any(p.name.endswith(".tmp") for p in (root / "masks").glob(".*")) if dataset else 0
    assert len(saved) >= 10, f"only {len(saved)} saves completed in {KILLS} runs: the kills hit too early"

    # One more clean save: it cuts any torn tail and sweeps the temporary files kills left behind.
    image, mask, proposal, group = _sample(next_seed)
    AnnotationDataset.open(root).add(image, mask, "after the kills", split_group=group, modality="CT", units="HU",
                                     window=WINDOW, proposal=proposal)
    dataset = _check_intact(root, saved)
    assert not dataset.torn_tail and len(dataset) >= len(saved) + 1
    assert [p for p in validate_dataset(root) if p.severity == "warning" and "incomplete" in p.message] == []
    leftovers = [p.name for folder in ("images", "masks") for p in (root / folder).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], f"temporary files of killed saves were left behind: {leftovers[:3]}"
    print(f"{len(saved)} saves reported over {KILLS} kills; {mid_save} kills left a half-written file, "
          f"{torn} a torn line")
