"""The dataset format: one writer, one reader, a validator that names the line, atomic appends."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.dataset.validate import validate_dataset

WINDOW = {"center": 50.0, "width": 400.0, "name": "soft tissue"}


def _slice(value: float = 0.0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((size, size), -1000.0 + value, np.float32)
    image[8:24, 8:24] = 60.0
    mask = np.zeros((size, size), bool)
    mask[10:14, 10:14] = True
    return image, mask


def _add(dataset: AnnotationDataset, text: str = "the largest lesion", group: str = "p-1", **kw):
    image, mask = _slice(kw.pop("value", 0.0))
    return dataset.add(image, mask, text, split_group=group, modality="CT", units="HU", window=WINDOW,
                       spacing_mm=(0.7, 0.7), **kw)


def _errors(root) -> list[str]:
    return [str(p) for p in validate_dataset(root) if p.severity == "error"]


def test_write_read_round_trip(tmp_path):
    dataset = AnnotationDataset.create(tmp_path / "d", window=WINDOW)
    image, mask = _slice()
    proposal = mask.copy()
    proposal[10, 10] = False
    record = dataset.add(image, mask, "  the largest  lesion ", split_group="p-1", modality="CT", units="HU",
                         window=WINDOW, attributes={"lesion_type": "HCC", "diameter_mm": 7.5, "shape": None},
                         model={"name": "lsms", "sha256": "ab" * 32}, proposal=proposal, split="train")
    again = AnnotationDataset.open(tmp_path / "d")
    assert len(again) == 1
    stored = again.records[0]
    assert stored["text"] == "the largest lesion"
    assert stored["attributes"] == {"lesion_type": "HCC", "diameter_mm": 7.5}  # empty values dropped
    np.testing.assert_array_equal(again.read_image(stored), image)
    np.testing.assert_array_equal(again.read_mask(stored), mask)
    np.testing.assert_array_equal(again.read_mask(stored, "proposal"), proposal)
    assert stored["provenance"]["edit_dice"] == pytest.approx(2 * 15 / 31, abs=1e-6)
    assert stored["provenance"]["model"]["name"] == "lsms"
    assert np.load(again.path(stored["image"])).dtype == np.int16  # whole HU stored losslessly and small
    assert record["id"] == stored["id"]
    assert _errors(tmp_path / "d") == []


def test_one_file_per_distinct_slice(tmp_path):
    dataset = AnnotationDataset.create(tmp_path / "d")
    _add(dataset, "the largest lesion")
    _add(dataset, "the smallest lesion")
    _add(dataset, "all lesions", value=5.0)
    assert len(list((tmp_path / "d" / "images").glob("*.npy"))) == 2
    assert len(list((tmp_path / "d" / "masks").glob("*.png"))) == 3


def test_splits_are_fixed_per_group(tmp_path):
    dataset = AnnotationDataset.create(tmp_path / "d")
    first = _add(dataset, group="p-7")
    for _ in range(3):
        assert _add(dataset, group="p-7")["split"] == first["split"]
    other = "val" if first["split"] != "val" else "test"
    with pytest.raises(DatasetError, match="already in split"):
        _add(dataset, group="p-7", split=other)
    splits = {_add(dataset, group=f"p-{i}")["split"] for i in range(40)}
    assert splits == {"train", "val", "test"}
    # Reopening does not reshuffle anything.
    reopened = AnnotationDataset.open(tmp_path / "d")
    assert reopened.split_of_group("p-7") == first["split"]


def test_a_mask_is_never_attached_to_another_image(tmp_path):
    dataset = AnnotationDataset.create(tmp_path / "d")
    image, _ = _slice()
    with pytest.raises(DatasetError, match="different image"):
        dataset.add(image, np.zeros((31, 32), bool), "x", split_group="p", modality="CT", units="HU")
    assert len(AnnotationDataset.open(tmp_path / "d")) == 0
    assert list((tmp_path / "d" / "masks").iterdir()) == []


def test_empty_mask_is_a_valid_no_finding_sample(tmp_path):
    dataset = AnnotationDataset.create(tmp_path / "d")
    image, _ = _slice()
    dataset.add(image, np.zeros_like(image, bool), "a cyst in segment II", split_group="p", modality="CT", units="HU")
    assert _errors(tmp_path / "d") == []


@pytest.mark.parametrize("damage,message", [
    ("broken-json", "line 2: not valid JSON"),
    ("missing-mask", "line 2: mask file"),
    ("wrong-size-mask", "line 2: mask masks/"),
    ("duplicate-id", "line 3: duplicate id"),
    ("missing-field", "line 2: missing field 'text'"),
    ("escaping-path", "line 2: 'image' must be a path inside images/"),
    ("two-splits", "is in several splits"),
])
def test_validator_names_the_line_and_the_problem(tmp_path, damage, message):
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    _add(dataset, "first", split="train")
    second = _add(dataset, "second", split="train")
    manifest = root / "annotations.jsonl"
    lines = manifest.read_text().splitlines()
    record = json.loads(lines[1])
    if damage == "broken-json":
        lines[1] = lines[1][:-7]
    elif damage == "missing-mask":
        (root / second["mask"]).unlink()
    elif damage == "wrong-size-mask":
        Image.fromarray(np.zeros((31, 32), np.uint8)).save(root / second["mask"])
    elif damage == "duplicate-id":
        lines.append(lines[0])
    elif damage == "missing-field":
        del record["text"]
        lines[1] = json.dumps(record)
    elif damage == "escaping-path":
        record["image"] = "../../etc/passwd"
        lines[1] = json.dumps(record)
    elif damage == "two-splits":
        record["split"] = "test"
        lines[1] = json.dumps(record)
    manifest.write_text("\n".join(lines) + "\n")
    errors = _errors(root)
    assert any(message in e for e in errors), errors
    done = subprocess.run([sys.executable, "-m", "training.data_cli", "validate", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and message in done.stdout


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    _add(dataset, "first")
    with open(root / "annotations.jsonl", "ab") as handle:
        handle.write(b'{"id": "half-writ')  # a crash in the middle of a save
    reopened = AnnotationDataset.open(root)
    assert len(reopened) == 1 and reopened.torn_tail
    assert _errors(root) == []  # still valid: the fragment is reported as a warning only
    _add(reopened, "second")
    text = (root / "annotations.jsonl").read_text()
    assert "half-writ" not in text and len(text.splitlines()) == 2
    assert _errors(root) == []


def test_failed_file_write_leaves_the_dataset_valid(tmp_path, monkeypatch):
    import lsms_core.dataset.store as store

    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    _add(dataset, "first")
    real = store.atomic_write_bytes

    def fail_on_mask(path, data):
        if path.suffix == ".png":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", fail_on_mask)
    with pytest.raises(OSError):
        _add(dataset, "second", value=3.0)
    monkeypatch.undo()
    assert len(AnnotationDataset.open(root)) == 1
    assert _errors(root) == []


def _append_many(root: str, worker: int, count: int) -> None:
    dataset = AnnotationDataset.open(root)
    for i in range(count):
        _add(dataset, f"lesion {worker}-{i}", group=f"p-{worker}", value=float(worker))


def test_two_processes_appending_at_once_lose_no_line(tmp_path):
    root = tmp_path / "d"
    AnnotationDataset.create(root)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(root), w, 15)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    dataset = AnnotationDataset.open(root)
    assert sorted(r["text"] for r in dataset.records) == sorted(f"lesion {w}-{i}" for w in range(2) for i in range(15))
    assert _errors(root) == []


def test_not_a_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json is missing"):
        AnnotationDataset.open(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        AnnotationDataset.open(tmp_path)
    assert "not valid JSON" in str(validate_dataset(tmp_path)[0])


def test_records_cannot_point_outside_the_dataset(tmp_path):
    dataset = AnnotationDataset.create(tmp_path / "d")
    with pytest.raises(DatasetError, match="not a path inside"):
        dataset.read_image({"image": "../../secret.npy"})
    with pytest.raises(DatasetError, match="not a path inside"):
        dataset.read_mask({"mask": "/etc/passwd"})
