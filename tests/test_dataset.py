"""The dataset format: one writer, one reader, a validator that names the line, atomic appends."""

from __future__ import annotations

import json
import multiprocessing
import re
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


# --- issue 15: a complete last line without its newline; a manifest that is not a regular file -------

def test_complete_last_line_without_newline_is_a_record_and_survives_the_next_save(tmp_path):
    """A hand edit or a script can drop the final newline: that line is a saved annotation, not a torn
    save. It was counted out by the validator and cut away by the next save."""
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    for i in range(3):
        _add(dataset, f"lesion {i}", group=f"p-{i}", value=float(i))
    manifest = root / "annotations.jsonl"
    manifest.write_bytes(manifest.read_bytes().rstrip(b"\n"))  # the last line loses its newline
    reopened = AnnotationDataset.open(root)
    assert [r["text"] for r in reopened.records] == ["lesion 0", "lesion 1", "lesion 2"]
    assert reopened.record_lines == [1, 2, 3] and not reopened.torn_tail
    assert validate_dataset(root) == []  # all three counted, no "incomplete last line" warning
    _add(reopened, "lesion 3", group="p-3", value=3.0)
    assert [r["text"] for r in reopened.records] == [f"lesion {i}" for i in range(4)]
    again = AnnotationDataset.open(root)
    assert [r["text"] for r in again.records] == [f"lesion {i}" for i in range(4)]
    assert again.record_lines == [1, 2, 3, 4]
    assert manifest.read_bytes().count(b"\n") == 4 and manifest.read_bytes().endswith(b"}\n")
    assert validate_dataset(root) == []


def test_unterminated_last_line_then_another_process_appends(tmp_path):
    """One process read the unterminated line; another then saves (adding the newline first): the first
    sees the new line once, with the right line number, and its own next save keeps everything."""
    root = tmp_path / "d"
    first = AnnotationDataset.create(root)
    _add(first, "lesion 0", group="p-0")
    manifest = root / "annotations.jsonl"
    manifest.write_bytes(manifest.read_bytes().rstrip(b"\n"))
    first = AnnotationDataset.open(root)
    second = AnnotationDataset.open(root)
    _add(second, "lesion 1", group="p-1", value=1.0)
    _add(first, "lesion 2", group="p-2", value=2.0)
    assert [r["text"] for r in first.records] == ["lesion 0", "lesion 1", "lesion 2"]
    assert first.record_lines == [1, 2, 3] and first.bad_lines == []
    assert [r["text"] for r in AnnotationDataset.open(root).records] == ["lesion 0", "lesion 1", "lesion 2"]


@pytest.mark.parametrize("tail,kept", [
    (b'{"id": "half-writ', False),  # a save cut short: torn, removed by the next save
    (b"   ", False),  # whitespace only: nothing to keep
    (b"[1, 2]", True),  # complete JSON but not an object: a bad line the validator names, never cut away
])
def test_only_an_unparseable_tail_is_torn(tmp_path, tail, kept):
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    _add(dataset, "first")
    with open(root / "annotations.jsonl", "ab") as handle:
        handle.write(tail)
    reopened = AnnotationDataset.open(root)
    assert reopened.torn_tail is (not kept)
    if kept:
        assert any("line 2: not a JSON object" in e for e in _errors(root))
    _add(reopened, "second", group="p-2", value=2.0)
    assert (tail in (root / "annotations.jsonl").read_bytes()) is kept
    assert [r["text"] for r in AnnotationDataset.open(root).records] == ["first", "second"]


def _run_with_timeout(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("name", ["annotations.jsonl", "dataset.json", ".lock", "mask", "image"])
def test_files_that_are_fifos_are_refused_not_waited_on(tmp_path, name):
    """``lsms-data validate`` on a manifest that is a FIFO hung forever (reading a pipe no one writes).
    Every dataset file is opened only if it is a regular file; the message says what it is."""
    import os

    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    record = _add(dataset, "first")
    target = root / {"mask": record["mask"], "image": record["image"]}.get(name, name)
    target.unlink()
    os.mkfifo(target)
    if name == ".lock":  # only a save takes the lock
        code = (f"import sys; sys.path.insert(0, 'tests'); from test_dataset import _add; "
                f"from lsms_core.dataset import AnnotationDataset, DatasetError\n"
                f"try:\n    _add(AnnotationDataset.open({str(root)!r}), 'second', group='p-2', value=2.0)\n"
                f"except DatasetError as exc:\n    print('refused:', exc)")
        done = _run_with_timeout(code)
        assert done.returncode == 0, done.stderr
        output = done.stdout
    else:
        done = _run_with_timeout(f"from training.data_cli import main; raise SystemExit(main(['validate', "
                                 f"{str(root)!r}]))")
        assert done.returncode == 1, done.stdout + done.stderr
        output = done.stdout + done.stderr
    assert "not a regular file" in output and "FIFO" in output and name.split(".")[0] in output
    assert "Traceback" not in output


@pytest.mark.parametrize("kind", ["image", "mask"])
def test_reading_a_fifo_image_or_mask_is_refused(tmp_path, kind):
    import os

    root = tmp_path / "d"
    record = _add(AnnotationDataset.create(root), "first")
    (root / record[kind]).unlink()
    os.mkfifo(root / record[kind])
    code = (f"from lsms_core.dataset import AnnotationDataset, DatasetError\n"
            f"d = AnnotationDataset.open({str(root)!r})\n"
            f"try:\n    d.read_{kind}(d.records[0])\nexcept DatasetError as exc:\n    print('refused:', exc)")
    done = _run_with_timeout(code)
    assert done.returncode == 0 and "refused:" in done.stdout and "FIFO" in done.stdout, done.stdout + done.stderr


# --- issue 15: lines that would crash training, leakage, sizes -------------------------------------------------

def _edit_line(root: Path, index: int, change) -> None:
    """Apply ``change`` to the record on manifest line ``index + 1`` and write it back."""
    manifest = root / "annotations.jsonl"
    lines = manifest.read_text().splitlines()
    record = json.loads(lines[index])
    change(record)
    lines[index] = json.dumps(record)
    manifest.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("units"), "missing field 'units'"),  # lsms-train: KeyError 'units'
    (lambda r: r.update(image=123), "field 'image' must be str, got int"),  # lsms-train: TypeError
    (lambda r: r.update(text="\u200b\u200c\u2060\ufeff"), "empty expression 'text' (nothing visible"),  # zero-width
    (lambda r: r.update(text="x" * 100_001), "expression 'text' is 100,001 characters long"),
])
def test_a_bad_line_is_named_when_the_dataset_is_used(tmp_path, change, message):
    """Issue 15: a line without ``units`` ended lsms-train in a KeyError, ``image: 123`` in a TypeError, and a text
    of zero-width characters passed the validator and aborted a whole lsms-eval. The validator names the line;
    ``select`` (what training, evaluation and export read) refuses the dataset, naming the line, as the
    validator's rule (an invalid line is an error) implies. The dataset still opens, so the widget can save."""
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    _add(dataset, "first", split="train")
    _add(dataset, "second", split="test", value=3.0, group="p-2")
    _edit_line(root, 1, change)
    assert any(f"line 2: {message}" in e for e in _errors(root)), _errors(root)
    reopened = AnnotationDataset.open(root)
    for split in ("test", "train", None):  # a bad line in any split: the dataset does not validate
        with pytest.raises(DatasetError, match=rf"annotations.jsonl line 2: .*{re.escape(message)}.*lsms-data "
                                               "validate"):
            reopened.select(split)
    _add(reopened, "third", value=4.0, group="p-3")  # saving still works
    assert len(AnnotationDataset.open(root)) == 3


def test_a_line_that_is_not_json_is_named_when_the_dataset_is_used(tmp_path):
    """A byte-order mark made line 1 unreadable and training silently used 2 of 3 samples (issue 15 item 6)."""
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    for value in range(3):
        _add(dataset, "a lesion", value=float(value), split="train")
    manifest = root / "annotations.jsonl"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    with pytest.raises(DatasetError, match="line 1: not valid JSON"):
        AnnotationDataset.open(root).select("train")


def test_split_fractions_that_are_not_an_object_are_a_clear_error(tmp_path):
    """Issue 15: ``split_fractions`` as a list in dataset.json ended add() in an AttributeError."""
    root = tmp_path / "d"
    AnnotationDataset.create(root)
    info = json.loads((root / "dataset.json").read_text())
    info["split_fractions"] = [0.7, 0.15, 0.15]
    (root / "dataset.json").write_text(json.dumps(info))
    dataset = AnnotationDataset.open(root)
    with pytest.raises(DatasetError, match=r"dataset.json: split_fractions must be an object such as .*got a JSON "
                                           "array.*fix dataset.json"):
        _add(dataset)
    _add(dataset, split="train")  # an explicit split needs no fractions
    assert any("split_fractions must be an object" in e for e in _errors(root))


def test_the_identical_slice_in_two_splits_is_an_error(tmp_path):
    """Issue 15: the validator called a dataset valid with the identical slice in train and test under two
    split groups. Images are stored by content, so the two lines name one file."""
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    _add(dataset, "the lesion", group="scan-a", split="train")
    _add(dataset, "the lesion", group="scan-b", split="test")  # same pixels, another group
    _add(dataset, "another slice", group="scan-c", split="test", value=9.0)
    errors = _errors(root)
    assert any("line 1: the identical slice images/" in e and "train (line 1), test (line 2)" in e
               for e in errors), errors


def test_an_identical_slice_stored_under_two_names_is_found_by_deep_validation(tmp_path):
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    first = _add(dataset, "the lesion", group="scan-a", split="train")
    second = _add(dataset, "the lesion", group="scan-b", split="test", value=9.0)
    (root / second["image"]).write_bytes((root / first["image"]).read_bytes())  # a copy under another name
    assert not any("identical" in e for e in _errors(root))  # the fast check goes by name only
    deep = [str(p) for p in validate_dataset(root, deep=True) if p.severity == "error"]
    assert any("hold identical pixels and are in several splits: train (line 1), test (line 2)" in e
               for e in deep), deep


def test_one_patient_in_two_splits_is_a_warning(tmp_path):
    """One ``patient_key`` in two splits: a warning (not an error) because it can be deliberate: RefLiTS splits
    one LiTS volume into slice blocks with gaps between them (docs/reliability.md)."""
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    _add(dataset, "a", group="block-1", patient_key="p:17", split="train")
    _add(dataset, "b", group="block-2", patient_key="p:17", split="test", value=9.0)
    problems = validate_dataset(root)
    assert [p.severity for p in problems if "patient_key 'p:17' is in several splits" in p.message] == ["warning"]
    assert _errors(root) == []


def test_a_huge_image_is_refused_from_headers_by_the_fast_validator(tmp_path):
    """Issue 15: a 40000x40000 image passed the non-deep validator and lsms-train ended in a MemoryError
    traceback. The record's height x width and the .npy header are refused; nothing is loaded."""
    import struct
    import zlib

    from conftest import peak_memory

    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    record = _add(dataset, "small", split="train")
    image = root / "images" / "huge.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.uint8))
    header["shape"] = (40000, 40000)
    with open(image, "wb") as handle:  # 1.6 GB, sparse: no disk space
        np.lib.format.write_array_header_1_0(handle, header)
        handle.truncate(handle.tell() + 40000 * 40000)
    png = bytearray((root / record["mask"]).read_bytes())  # a real mask PNG whose IHDR says 40000x40000
    png[16:24] = struct.pack(">II", 40000, 40000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    (root / "masks" / "huge.png").write_bytes(bytes(png))
    with open(root / "annotations.jsonl", "a") as handle:
        handle.write(json.dumps({**record, "id": "huge-1", "image": "images/huge.npy", "mask": "masks/huge.png",
                                 "height": 40000, "width": 40000}) + "\n")

    def check():
        errors = _errors(root)
        assert any("line 2: the slice is 40000x40000 (1,600,000,000 pixels): more than the 100,000,000" in e
                   for e in errors), errors
        with pytest.raises(DatasetError, match="line 2: the slice is 40000x40000"):
            AnnotationDataset.open(root).select("train")

    assert peak_memory(check) < 20_000_000
    _edit_line(root, 1, lambda r: r.update(height=32, width=32))  # a line that lies about the size
    assert any("image images/huge.npy is 40000x40000 but the line says 32x32" in e for e in _errors(root))
    bad = AnnotationDataset.open(root).records[1]
    assert peak_memory(lambda: pytest.raises(DatasetError, AnnotationDataset.open(root).read_image, bad)) < 5_000_000
    with pytest.raises(DatasetError, match="huge.npy is 40000x40000 but annotation 'huge-1' says 32x32"):
        AnnotationDataset.open(root).read_image(bad)
    with pytest.raises(DatasetError, match="huge.png: the mask is far larger than any image"):  # Pillow's limit
        AnnotationDataset.open(root).read_mask(bad)
    Image.fromarray(np.zeros((40, 32), np.uint8)).save(root / "masks" / "huge.png")
    with pytest.raises(DatasetError, match="huge.png is 40x32 but annotation 'huge-1' says 32x32"):
        AnnotationDataset.open(root).read_mask(bad)


def test_an_image_beyond_float32_is_refused_by_the_writer(tmp_path):
    """Finite float64 values such as 1e300 become infinite when training reads them as float32."""
    dataset = AnnotationDataset.create(tmp_path / "d")
    image, mask = _slice()
    image = image.astype(np.float64)
    image[0, 0] = 1e300
    with pytest.raises(DatasetError, match="values up to 1e\\+300 in magnitude, beyond what 32-bit floats hold"):
        dataset.add(image, mask, "x", split_group="p", modality="CT", units="HU")


def test_replacing_an_annotation_swaps_its_line_atomically_and_keeps_every_other_byte(tmp_path, monkeypatch):
    """Issue 11: saving the same layer again may update the earlier annotation. The new line takes the old
    one's place in one atomic rename; every other line is kept byte for byte; the old files go."""
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    first = _add(dataset, "first", group="p-1")
    old = _add(dataset, "second", group="p-2", value=2.0, proposal=_slice()[1])
    third = _add(dataset, "third", group="p-3", value=3.0)
    before = (root / "annotations.jsonl").read_bytes().split(b"\n")
    other_reader = AnnotationDataset.open(root)  # another process with the dataset open

    from lsms_core.dataset import store

    writes = []
    real_write = store.atomic_write_bytes

    def failing_manifest_write(path, data):
        writes.append(Path(path).name)
        if Path(path).name == "annotations.jsonl":
            raise OSError(28, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", failing_manifest_write)
    image, mask = _slice(2.0)
    with pytest.raises(OSError):
        dataset.add(image, ~mask, "second, corrected", split_group="p-2", modality="CT", units="HU", replaces=old["id"])
    assert (root / "annotations.jsonl").read_bytes().split(b"\n") == before  # the failed update changed nothing
    assert "annotations.jsonl" in writes
    monkeypatch.undo()

    new = AnnotationDataset.open(root).add(image, ~mask, "second, corrected", split_group="p-2", modality="CT",
                                           units="HU", replaces=old["id"])
    after = (root / "annotations.jsonl").read_bytes().split(b"\n")
    assert len(after) == len(before) and after[0] == before[0] and after[2] == before[2]
    assert json.loads(after[1])["id"] == new["id"] != old["id"]
    assert new["provenance"]["replaces"] == old["id"] and new["split"] == old["split"]
    reopened = AnnotationDataset.open(root)
    assert [r["text"] for r in reopened.records] == ["first", "second, corrected", "third"]
    np.testing.assert_array_equal(reopened.read_mask(reopened.records[1]), ~mask)
    assert not (root / old["mask"]).exists() and not (root / old["provenance"]["proposal"]).exists()
    assert (root / first["mask"]).exists() and (root / third["mask"]).exists()
    assert validate_dataset(root) == []  # no orphan files, no duplicate, nothing torn
    # A reader opened before the update sees it (the manifest was renamed over: it reads it again) and appends.
    _add(other_reader, "fourth", group="p-4", value=4.0)
    assert [r["text"] for r in other_reader.records] == ["first", "second, corrected", "third", "fourth"]
    assert [r["text"] for r in AnnotationDataset.open(root).records] == ["first", "second, corrected", "third",
                                                                         "fourth"]
    with pytest.raises(DatasetError, match=rf"annotation {old['id']} is not in .*save this one as a new annotation"):
        _add(reopened, "again", group="p-2", value=2.0, replaces=old["id"])
    assert len(AnnotationDataset.open(root)) == 4 and validate_dataset(root) == []


def test_a_split_group_moves_to_another_split_in_one_rewrite(tmp_path):
    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    _add(dataset, "a", group="p-1", split="test")
    _add(dataset, "b", group="p-2", split="test", value=2.0)
    _add(dataset, "c", group="p-1", split="test", value=3.0)
    assert dataset.set_group_split("p-1", "val") == 2
    assert [r["split"] for r in AnnotationDataset.open(root).records] == ["val", "test", "val"]
    assert dataset.set_group_split("p-1", "val") == 0
    with pytest.raises(DatasetError, match="no split group 'p-9'"):
        dataset.set_group_split("p-9", "train")
    with pytest.raises(DatasetError, match="must be one of"):
        dataset.set_group_split("p-1", "holdout")
    _add(dataset, "d", group="p-3", split="train", value=3.0)  # the slice of "c", in another group and split
    with pytest.raises(DatasetError, match="would put the same slice in two splits"):
        dataset.set_group_split("p-1", "test")
    assert [r["split"] for r in AnnotationDataset.open(root).records] == ["val", "test", "val", "train"]  # unchanged
