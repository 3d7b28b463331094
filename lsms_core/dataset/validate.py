"""Check a dataset folder and say, per manifest line, what is wrong."""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..image_io import map_npy
from .schema import check_record
from .schema import SPLITS
from .store import (DEFAULT_SPLIT_FRACTIONS, INFO, AnnotationDataset, DatasetError, not_regular_reason,
                    split_fractions_problem)


def _check_regular(path: Path) -> None:
    """ValueError unless ``path`` is a regular file: reading a FIFO (or a device) would never end.
    A missing file raises FileNotFoundError."""
    reason = not_regular_reason(os.stat(path).st_mode)
    if reason is not None:
        raise ValueError(f"it is not a regular file but {reason}")


@dataclass(frozen=True)
class Problem:
    """One finding. ``line`` is the 1-based manifest line, or None for the dataset as a whole."""

    message: str
    line: int | None = None
    severity: str = "error"  # "error" fails validation; "warning" does not

    def __str__(self) -> str:
        where = f"annotations.jsonl line {self.line}: " if self.line is not None else ""
        return f"{self.severity}: {where}{self.message}"


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape of a .npy image, from its header; ValueError if the file cannot be that image."""
    _check_regular(path)
    array = map_npy(path)  # NpyError (a ValueError) names what is wrong
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"pixel type {array.dtype} is not a real number type")
    return tuple(array.shape)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header_shape(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG's signature and IHDR chunk (the first 24 bytes, PNG spec 5.2-5.3).

    What Pillow's lazy open checks, ~10x faster: a 100k-line dataset names 200k masks.
    """
    _check_regular(path)
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError("is not a PNG file (no PNG signature and IHDR header)")
    width, height = struct.unpack(">II", head[16:24])
    if not width or not height:
        raise ValueError(f"has an empty size {width}x{height} in its header")
    return height, width


def _png_shape(path: Path, deep: bool) -> tuple[int, int]:
    """(height, width) of a mask PNG; ValueError if it is damaged or (``deep``) not binary."""
    if not deep:
        return _png_header_shape(path)
    from PIL import Image

    _check_regular(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            values = np.unique(np.asarray(image.convert("L"))) if deep else None
    except (FileNotFoundError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow on damaged files: OSError, SyntaxError, zlib.error...
        raise ValueError(" ".join(str(exc).split()) or type(exc).__name__) from None
    if values is not None and not set(values.tolist()) <= {0, 1, 255}:
        raise ValueError(f"is not binary (values {values[:6].tolist()}...)")
    return height, width


def validate_dataset(root: str | os.PathLike, deep: bool = False) -> list[Problem]:
    """All problems found. ``deep`` also decodes every mask to check it is binary, and compares the
    images' contents (an identical slice stored under two names in two splits)."""
    try:
        dataset = AnnotationDataset.open(root)
    except DatasetError as exc:
        return [Problem(str(exc))]
    problems = [Problem(message, line) for line, message in dataset.bad_lines]
    fractions = split_fractions_problem(dataset.info.get("split_fractions", DEFAULT_SPLIT_FRACTIONS))
    if fractions:
        problems.append(Problem(f"{INFO}: split_fractions {fractions}; saving an annotation of a new split group "
                                "fails until it is fixed"))
    if dataset.torn_tail:
        problems.append(Problem("the last line is incomplete (a save was interrupted); it is ignored and "
                                "will be removed by the next save", None, "warning"))
    image_shapes: dict[str, tuple[int, ...] | str] = {}
    first_line_of_id: dict[str, int] = {}
    group_splits: dict[str, dict[str, int]] = defaultdict(dict)
    image_splits: dict[str, dict[str, int]] = defaultdict(dict)
    patient_splits: dict[str, dict[str, int]] = defaultdict(dict)
    referenced: set[str] = set()
    for record, line in zip(dataset.records, dataset.record_lines):
        issues = check_record(record)
        if issues:
            problems.extend(Problem(issue, line) for issue in issues)
            continue
        if record["id"] in first_line_of_id:
            problems.append(Problem(f"duplicate id {record['id']!r} (first on line {first_line_of_id[record['id']]})",
                                    line))
        else:
            first_line_of_id[record["id"]] = line
        group_splits[record["split_group"]].setdefault(record["split"], line)
        image_splits[record["image"]].setdefault(record["split"], line)
        patient_splits[record["patient_key"]].setdefault(record["split"], line)
        expected = (record["height"], record["width"])
        image = record["image"]
        referenced.update({image, record["mask"]})
        if image not in image_shapes:
            path = dataset.path(image)
            try:
                image_shapes[image] = _npy_shape(path)
            except FileNotFoundError:
                image_shapes[image] = f"image file {image} is missing"
            except (ValueError, OSError) as exc:
                image_shapes[image] = f"image file {image} is not a readable .npy array ({exc})"
        shape = image_shapes[image]
        if isinstance(shape, str):
            problems.append(Problem(shape, line))
        elif tuple(shape) != expected:
            problems.append(Problem(f"image {image} is {'x'.join(map(str, shape))} but the line says "
                                    f"{expected[0]}x{expected[1]}", line))
        masks = [("mask", record["mask"])]
        proposal = record.get("provenance", {}).get("proposal")
        if proposal:
            masks.append(("proposal", proposal))
            referenced.add(proposal)
        for kind, relative in masks:
            try:
                size = _png_shape(dataset.path(relative), deep)
            except FileNotFoundError:
                problems.append(Problem(f"{kind} file {relative} is missing", line))
                continue
            except (ValueError, OSError) as exc:
                problems.append(Problem(f"{kind} file {relative} {exc}" if "binary" in str(exc)
                                        else f"{kind} file {relative} is not a readable PNG ({exc})", line))
                continue
            if size != expected:
                problems.append(Problem(f"{kind} {relative} is {size[0]}x{size[1]} but its image is "
                                        f"{expected[0]}x{expected[1]}", line))
    identified = [line for record, line in zip(dataset.records, dataset.record_lines) if record.get("identifiers")]
    if identified:
        problems.append(Problem(f"{len(identified)} annotation(s) hold patient identifiers (saved with the opt-in, "
                                f"first on line {identified[0]}): remove them before sharing this dataset",
                                None, "warning"))
    for group, splits in group_splits.items():
        if len(splits) > 1:
            where = ", ".join(f"{s} (line {n})" for s, n in splits.items())
            problems.append(Problem(f"split group {group!r} is in several splits: {where}; a patient must stay "
                                    "in one split"))
    problems += _leaks(dataset, image_splits, patient_splits, image_shapes, deep)
    for folder in ("images", "masks"):
        directory = dataset.root / folder
        if directory.is_dir():
            orphans = [p.name for p in directory.iterdir()
                       if not p.name.startswith(".") and f"{folder}/{p.name}" not in referenced]
            if orphans:
                problems.append(Problem(f"{len(orphans)} file(s) in {folder}/ belong to no annotation (an "
                                        f"interrupted save?), e.g. {orphans[0]}", None, "warning"))
    return problems + _lesion_problems(dataset)


def _lesion_problems(dataset: AnnotationDataset) -> list[Problem]:
    """Problems of the 3-D lesions (volumes.jsonl, lsms_core.dataset.volumes): a record that does not match
    its slice lines is an error; slice lines of a lesion without a record (an interrupted save) a warning."""
    from .volumes import VOLUMES, check_volume_record, read_volume_records

    try:
        volumes = read_volume_records(dataset)
    except (DatasetError, OSError) as exc:
        return [Problem(f"{VOLUMES}: {exc}")]
    by_id = {r["id"]: r for r in dataset.records if isinstance(r.get("id"), str)}  # a broken id: reported above
    problems = [Problem(f"{VOLUMES} line {number}: {issue}") for number, volume in enumerate(volumes, start=1)
                for issue in check_volume_record(volume, by_id)]
    recorded = {v.get("id") for v in volumes if isinstance(v.get("id"), str)}
    lesions = {r["source"].get("lesion_id") for r in dataset.records if isinstance(r.get("source"), dict)}
    unrecorded = sorted({lesion for lesion in lesions if isinstance(lesion, str)} - recorded)
    if unrecorded:
        problems.append(Problem(f"{len(unrecorded)} 3-D lesion(s) have slice lines but no record in {VOLUMES} (an "
                                f"interrupted save?), e.g. {unrecorded[0]}: their slices train as 2-D annotations",
                                None, "warning"))
    return problems


@dataclass(frozen=True)
class SplitCount:
    """How much one split holds: annotation lines, distinct ``patient_key`` values, split groups."""

    annotations: int = 0
    patients: int = 0
    groups: int = 0


def split_counts(dataset: AnnotationDataset) -> dict[str, SplitCount]:
    """Per split (train, val, test, in that order): annotations, patients and groups. Lines that are
    not valid records (the validator's errors) are not counted."""
    records = [r for r in dataset.records if not check_record(r)]
    return {split: SplitCount(sum(r["split"] == split for r in records),
                              len({r["patient_key"] for r in records if r["split"] == split}),
                              len({r["split_group"] for r in records if r["split"] == split}))
            for split in SPLITS}


_EMPTY_SPLIT_EFFECT = {
    "train": "lsms-train cannot train on this dataset",
    "val": "lsms-train cannot validate: it trains anyway and picks best.safetensors by training loss",
    "test": "lsms-eval --split test has nothing to measure",
}


def empty_split_problems(counts: dict[str, SplitCount]) -> list[Problem]:
    """A warning (never an error: a young dataset grows into its splits) per empty split, saying what it
    breaks and what to do; none for a dataset without annotations."""
    if not any(count.annotations for count in counts.values()):
        return [Problem("the dataset holds no annotations yet", None, "warning")] if counts else []
    return [Problem(f"split {split!r} is empty: {_EMPTY_SPLIT_EFFECT[split]}; annotate more patients (a new "
                    "patient's split is drawn by split_fractions in dataset.json) or move a group there with "
                    f"'lsms-data set-split DATASET GROUP {split}'", None, "warning")
            for split, count in counts.items() if count.annotations == 0]


def _where(splits: dict[str, int]) -> str:
    return ", ".join(f"{split} (line {line})" for split, line in splits.items())


def _leaks(dataset: AnnotationDataset, image_splits: dict[str, dict[str, int]],
           patient_splits: dict[str, dict[str, int]], image_shapes: dict, deep: bool) -> list[Problem]:
    """Data of one slice or one patient in two splits.

    The same image in two splits is an error: the model is tested on pixels it was trained on. Images
    are stored under their content hash, so one slice saved twice is one file; ``deep`` also hashes the
    files, for an identical slice stored under two names. One ``patient_key`` in two splits is a warning:
    it is leakage between a patient's slices unless the split was made on purpose within one patient (RefLiTS
    splits one LiTS volume into slice blocks with gaps, docs/dataset-format.md); the split is fixed per
    split group, which the writer makes the patient by default.
    """
    problems = []
    for image, splits in image_splits.items():
        if len(splits) > 1:
            problems.append(Problem(f"the identical slice {image} is in several splits: {_where(splits)}; a model "
                                    "would be tested on pixels it was trained on: give its annotations one split "
                                    "group (one split)", next(iter(splits.values()))))
    if deep:
        by_content: dict[str, list[str]] = defaultdict(list)
        for image in image_splits:
            if isinstance(image_shapes.get(image), tuple):
                try:
                    by_content[_content_hash(dataset.path(image))].append(image)
                except (OSError, ValueError):  # changed since it was checked: reported above or next run
                    continue
        for images in by_content.values():
            splits: dict[str, int] = {}
            for image in images:
                for split, line in image_splits[image].items():
                    splits.setdefault(split, line)
            if len(images) > 1 and len(splits) > 1:
                problems.append(Problem(f"the images {', '.join(images)} hold identical pixels and are in several "
                                        f"splits: {_where(splits)}; a model would be tested on pixels it was trained "
                                        "on: keep them in one split", next(iter(splits.values()))))
    for key, splits in patient_splits.items():
        if len(splits) > 1:
            problems.append(Problem(f"patient_key {key!r} is in several splits: {_where(splits)}; slices of one "
                                    "patient in training and testing leak (neighbouring slices look alike) unless the "
                                    "split within the patient is deliberate (e.g. RefLiTS' slice blocks with gaps)",
                                    next(iter(splits.values())), "warning"))
    return problems


def _content_hash(path: Path) -> str:
    """SHA-256 of an image's pixels as stored (dtype, shape and bytes), whatever the file's name."""
    import hashlib

    array = map_npy(path)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()
