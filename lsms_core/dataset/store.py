"""The one reader and writer of annotation datasets (docs/dataset-format.md).

Saving never loses or corrupts earlier work: every file is written to a temporary name,
fsynced and renamed; ``annotations.jsonl`` is only ever appended to, one line per
annotation in one ``write`` call, under an exclusive file lock so several processes can
append at once. A crash between steps leaves at most unreferenced files, never a bad line;
the temporary files a killed save leaves are swept by the next save (under the same lock).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import getpass
import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson

from ..atomic import atomic_write_bytes
from .schema import FORMAT_NAME, FORMAT_VERSION, SPLITS, check_record

MANIFEST = "annotations.jsonl"
INFO = "dataset.json"
LOCK = ".lock"
DEFAULT_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


class DatasetError(ValueError):
    """The dataset or an annotation is not usable; the message names the problem."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


def encode_mask_png(mask: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def compact_pixels(image: np.ndarray) -> np.ndarray:
    """The smallest lossless dtype for a slice (e.g. HU from DICOM are whole numbers: int16)."""
    array = np.asarray(image)
    if array.dtype.kind == "f" and np.isfinite(array).all() and np.array_equal(array, np.round(array)):
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        for kind in (np.uint8, np.int16, np.int32):
            info = np.iinfo(kind)
            if info.min <= low and high <= info.max:
                return array.astype(kind)
    return array


def _split_for_new_group(group: str, fractions: dict[str, float]) -> str:
    """A stable split for a group never seen before: its hash picks a bucket by the fractions."""
    position = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    cumulative = 0.0
    for split in SPLITS:
        cumulative += fractions.get(split, 0.0)
        if position < cumulative:
            return split
    return SPLITS[-1]


class AnnotationDataset:
    """A dataset folder: ``dataset.json``, ``annotations.jsonl``, ``images/``, ``masks/``.

    ``records`` holds the parsed lines (dicts, see schema.py), in file order. Lines that do
    not parse are kept out of ``records`` and listed in ``bad_lines`` (the validator reports
    them); an incomplete last line left by a crash is ignored and removed by the next save.
    """

    def __init__(self, root: Path, info: dict[str, Any]) -> None:
        self.root = root
        self.info = info
        self.records: list[dict[str, Any]] = []
        self.record_lines: list[int] = []  # manifest line number of each record
        self.bad_lines: list[tuple[int, str]] = []
        self.torn_tail = False
        self._offset = 0
        self._lines = 0
        self._ids: set[str] = set()
        self._group_split: dict[str, str] = {}
        self._swept = False

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, modality: str = "CT", window: dict | None = None,
               description: str = "", split_fractions: dict[str, float] | None = None,
               exist_ok: bool = False) -> "AnnotationDataset":
        """Make a new, empty dataset folder (or open it if ``exist_ok`` and it is one)."""
        root = Path(root)
        if (root / INFO).exists():
            if exist_ok:
                return cls.open(root)
            raise DatasetError(f"{root} already holds a dataset; open it instead of creating it")
        fractions = dict(split_fractions or DEFAULT_SPLIT_FRACTIONS)
        if set(fractions) - set(SPLITS) or abs(sum(fractions.values()) - 1) > 1e-6:
            raise DatasetError(f"split fractions must cover {SPLITS} and sum to 1, got {fractions}")
        root.mkdir(parents=True, exist_ok=True)
        (root / "images").mkdir(exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created": now_iso(),
                "description": description, "split_fractions": fractions,
                "defaults": {"modality": modality, "window": window}}
        atomic_write_bytes(root / INFO, (json.dumps(info, indent=2) + "\n").encode())
        (root / MANIFEST).touch()
        return cls(root, info)

    @classmethod
    def open(cls, root: str | os.PathLike) -> "AnnotationDataset":
        root = Path(root)
        info_path = root / INFO
        if not info_path.is_file():
            raise DatasetError(f"{root} is not a dataset: {INFO} is missing (create one with "
                               "AnnotationDataset.create or lsms-data import-lvit)")
        try:
            info = json.loads(info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{info_path} is not valid JSON: {exc}") from exc
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise DatasetError(f"{info_path} does not describe an {FORMAT_NAME} dataset")
        if info.get("version") != FORMAT_VERSION:
            raise DatasetError(f"{root} is format version {info.get('version')}; this lsms-napari reads "
                               f"version {FORMAT_VERSION}")
        dataset = cls(root, info)
        dataset._read_new_lines()
        return dataset

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def _read_new_lines(self) -> None:
        """Parse lines appended since the last read (by us or by another process)."""
        if not self.manifest.exists():
            return
        with open(self.manifest, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.torn_tail = end < len(data)
        # orjson parses a line ~2.5x faster than json and shares key strings (half the memory); the
        # cyclic GC is paused because it would rescan every record built so far, again and again,
        # while none of them can be part of a cycle (docs/benchmarks.md, "Scale of data").
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._parse_lines(data)
        finally:
            if gc_was_enabled:
                gc.enable()
        self._offset += end

    def _parse_lines(self, data: bytes) -> None:
        """Parse the complete lines of ``data``; what follows its last newline is not a line yet."""
        loads = orjson.loads
        lines = data.split(b"\n")  # only \n ends a line (a stray \r must not shift numbers)
        lines.pop()  # b"" after a final newline, or a torn tail
        for raw in lines:
            self._lines += 1
            if not raw.strip():
                continue
            try:
                record = loads(raw)
            except ValueError as exc:
                self.bad_lines.append((self._lines, f"not valid JSON ({exc})"))
                continue
            if not isinstance(record, dict):
                self.bad_lines.append((self._lines, "not a JSON object"))
                continue
            self.records.append(record)
            self.record_lines.append(self._lines)
            if isinstance(record.get("id"), str):  # a line with a broken id is the validator's to report
                self._ids.add(record["id"])
            group, split = record.get("split_group"), record.get("split")
            if isinstance(group, str) and group not in self._group_split:
                self._group_split[group] = split

    # --- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def select(self, split: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records if split is None or r.get("split") == split]

    def path(self, relative: str) -> Path:
        """The file a record names; never outside the dataset folder, whatever the line says."""
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            raise DatasetError(f"{relative!r} is not a path inside the dataset {self.root}")
        return self.root / relative

    def read_image(self, record: dict[str, Any]) -> np.ndarray:
        """The slice (H,W) in its stored units (HU for CT) as float32."""
        return np.load(self.path(record["image"]), allow_pickle=False).astype(np.float32)

    def read_mask(self, record: dict[str, Any], key: str = "mask") -> np.ndarray:
        """The (H,W) bool mask of an annotation (``key='proposal'`` for the model's proposal)."""
        from PIL import Image

        relative = record["mask"] if key == "mask" else record.get("provenance", {}).get("proposal")
        if relative is None:
            raise DatasetError(f"annotation {record.get('id')} has no {key} mask")
        with Image.open(self.path(relative)) as image:
            return np.asarray(image.convert("L")) > 0

    def split_of_group(self, group: str) -> str | None:
        return self._group_split.get(group)

    # --- writing ------------------------------------------------------------------------
    def add(self, image: np.ndarray, mask: np.ndarray, text: str, *, split_group: str, modality: str,
            units: str, patient_key: str | None = None, split: str | None = None,
            spacing_mm: tuple[float, float] | None = None, window: dict | None = None,
            attributes: dict[str, Any] | None = None, expression_kinds: list[str] | None = None,
            source: dict[str, Any] | None = None, model: dict[str, str] | None = None,
            proposal: np.ndarray | None = None, user: str | None = None,
            annotation_id: str | None = None, identifiers: dict[str, str] | None = None,
            include_identifiers: bool = False) -> dict[str, Any]:
        """Save one annotation (image file shared by content, mask, proposal, manifest line).

        image (H,W) in physical units; mask and proposal (H,W) binary. ``split`` None keeps
        the split the group already has, or assigns one from its hash for a new group.
        ``identifiers`` (DICOM keyword -> text, see lsms_core.privacy.dicom_identifiers) are
        stored, under the line's ``identifiers`` field, only when ``include_identifiers`` is
        True: by default a dataset holds pseudonymous keys and no patient identifier.
        Returns the record written. Raises DatasetError, writing nothing, if it is invalid.
        """
        pixels = compact_pixels(image)
        mask = np.asarray(mask)
        if pixels.ndim != 2:
            raise DatasetError(f"the image must be one 2-D slice, got shape {pixels.shape}")
        if mask.shape != pixels.shape:
            raise DatasetError(f"the mask is {mask.shape} but the image is {pixels.shape}: refusing to attach "
                               "a mask to a different image")
        if proposal is not None and np.asarray(proposal).shape != pixels.shape:
            raise DatasetError(f"the proposal mask is {np.asarray(proposal).shape}, the image {pixels.shape}")
        if not np.isfinite(pixels).all():
            raise DatasetError("the image has NaN or infinite pixels")
        record_id = annotation_id or uuid.uuid4().hex[:16]
        image_bytes = encode_npy(pixels)
        image_rel = f"images/{hashlib.sha256(image_bytes).hexdigest()[:20]}.npy"
        edit_dice = None
        if proposal is not None:
            from ..metrics import dice_iou

            edit_dice = round(dice_iou(np.asarray(proposal, bool), mask.astype(bool))[0], 6)
        provenance = {"model": model, "proposal": f"masks/{record_id}.proposal.png" if proposal is not None else None,
                      "edit_dice": edit_dice, "user": user or _user_name(), "saved_at": now_iso(),
                      "tool": "lsms-napari"}
        record = {"id": record_id, "image": image_rel, "mask": f"masks/{record_id}.png",
                  "height": int(pixels.shape[0]), "width": int(pixels.shape[1]), "text": " ".join(text.split()),
                  "attributes": {k: v for k, v in (attributes or {}).items() if v not in (None, "")},
                  "expression_kinds": list(expression_kinds or []), "modality": modality, "units": units,
                  "spacing_mm": [float(v) for v in spacing_mm] if spacing_mm is not None else None,
                  "window": window, "split": split or "", "split_group": split_group,
                  "patient_key": patient_key or split_group, "source": source or {}, "provenance": provenance}
        if include_identifiers and identifiers:
            record["identifiers"] = {str(k): str(v) for k, v in identifiers.items()}
        with _exclusive_lock(self.root / LOCK):
            self._sweep_temporary_files()
            self._read_new_lines()
            if record_id in self._ids:
                raise DatasetError(f"annotation id {record_id} already exists in {self.root}")
            known = self._group_split.get(split_group)
            if split is None:
                record["split"] = known or _split_for_new_group(split_group, self.info.get(
                    "split_fractions", DEFAULT_SPLIT_FRACTIONS))
            elif known is not None and known != split:
                raise DatasetError(f"group {split_group!r} is already in split {known!r}; splits are fixed per "
                                   "patient so that no patient is in two splits")
            problems = check_record(record)
            if problems:
                raise DatasetError(f"invalid annotation: {'; '.join(problems)}")
            try:
                line = json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as exc:  # NaN/inf or a non-JSON value in a nested field
                raise DatasetError(f"invalid annotation: {exc}") from exc
            image_path = self.path(image_rel)
            if not image_path.exists():
                atomic_write_bytes(image_path, image_bytes)
            atomic_write_bytes(self.path(record["mask"]), encode_mask_png(mask))
            if proposal is not None:
                atomic_write_bytes(self.path(provenance["proposal"]), encode_mask_png(proposal))
            self._append_line(line)
        return record

    def _sweep_temporary_files(self) -> None:
        """Remove the temporary files (``.<name>.<random>.tmp``) of saves that were killed mid-write.

        Called under the append lock, where every write into images/ and masks/ happens, so a
        temporary file found there belongs to a process that died; once per opened dataset.
        """
        if self._swept:
            return
        self._swept = True
        for folder in ("images", "masks"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.root / folder) as entries:
                for entry in entries:
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)

    def _append_line(self, line: str) -> None:
        """Append one manifest line in a single write, after cutting a torn tail a crash left."""
        data = (line + "\n").encode()
        fd = os.open(self.manifest, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size > self._offset:  # bytes after the last complete line: an interrupted save
                os.ftruncate(fd, self._offset)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._read_new_lines()


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
