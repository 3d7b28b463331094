"""The one reader and writer of annotation datasets (docs/dataset-format.md).

Saving never loses or corrupts earlier work: every file is written to a temporary name,
fsynced and renamed; a new annotation is appended to ``annotations.jsonl``, one line in one
``write`` call, under an exclusive file lock so several processes can append at once. Replacing
an annotation (``add(..., replaces=ID)``) or moving a split group (``set_group_split``) writes the
whole manifest to a temporary file and renames it over the old one, under the same lock: readers
see the old manifest or the new one, never a mix. A crash between steps leaves at most
unreferenced files, never a bad line; the temporary files a killed save leaves are swept by the
next save (under the same lock).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import gc
import getpass
import hashlib
import inspect
import io
import json
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson

from ..atomic import atomic_write_bytes
from .schema import FORMAT_NAME, FORMAT_VERSION, SPLITS, check_record, words_hold

MANIFEST = "annotations.jsonl"
INFO = "dataset.json"
LOCK = ".lock"
DEFAULT_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


class DatasetError(ValueError):
    """The dataset or an annotation is not usable; the message names the problem."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular_reason(mode: int) -> str | None:
    """What a file of ``st_mode`` is when it is not a regular file (reading a FIFO or a device never ends)."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` that never blocks on a FIFO and refuses anything but a regular file (DatasetError).

    The file is opened non-blocking (a FIFO then opens at once instead of waiting for a writer),
    checked with fstat on the open descriptor, and switched back to blocking.
    """
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | nonblocking | getattr(os, "O_BINARY", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # opening a FIFO for writing with no reader
            raise DatasetError(f"{path} is not a regular file but a FIFO (named pipe): replace it with the dataset's "
                               "real file") from None
        raise
    try:
        reason = not_regular_reason(os.fstat(fd).st_mode)
        if reason is not None:
            raise DatasetError(f"{path} is not a regular file but {reason}: a dataset file must be an ordinary file; "
                               "replace it with the dataset's real file")
        if nonblocking:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_regular(path: Path, offset: int = 0) -> bytes:
    """The bytes of a regular file from ``offset`` (DatasetError for a FIFO, a device, a folder)."""
    with os.fdopen(open_regular(path), "rb") as handle:
        handle.seek(offset)
        return handle.read()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with os.fdopen(open_regular(path, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+b") as handle:
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


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _image_name(image_bytes: bytes) -> str:
    return f"images/{hashlib.sha256(image_bytes).hexdigest()[:20]}.npy"


def image_file_name(image: np.ndarray) -> str:
    """The file (relative to the dataset) a slice is stored in: named by its content, so one slice saved
    twice is one file, and records with the same ``image`` hold the same pixels."""
    return _image_name(encode_npy(compact_pixels(image)))


def split_fractions_problem(fractions: Any) -> str | None:
    """What is wrong with split fractions (an object of train/val/test -> numbers summing to 1), or None."""
    if not isinstance(fractions, dict):
        return (f"must be an object such as {json.dumps(DEFAULT_SPLIT_FRACTIONS)}, got a JSON "
                f"{'array' if isinstance(fractions, (list, tuple)) else type(fractions).__name__}")
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        return f"name unknown splits {sorted(unknown)} (known: {', '.join(SPLITS)})"
    values = list(fractions.values())
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
        return f"must be numbers between 0 and 1, got {fractions}"
    if abs(sum(values) - 1) > 1e-6:
        return f"must cover {SPLITS} and sum to 1, got {fractions}"
    return None


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
        self._offset = 0  # bytes of the manifest read into ``records``
        self._unterminated = False  # the last line read was complete but had no newline (yet)
        self._lines = 0
        self._ids: set[str] = set()
        self._group_split: dict[str, str] = {}
        self._swept = False
        self._checked = 0  # records checked with check_record so far (select)
        self._invalid: list[tuple[int, list[str]]] = []  # (line, problems) of records that are not valid
        self._manifest_file: tuple[int, int] | None = None  # (device, inode) of the manifest read

    def _forget_lines(self) -> None:
        """Forget what was read: the manifest was replaced (an annotation updated, a group moved)."""
        self.records, self.record_lines, self.bad_lines = [], [], []
        self.torn_tail, self._offset, self._unterminated, self._lines = False, 0, False, 0
        self._ids, self._group_split, self._checked, self._invalid = set(), {}, 0, []

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
        fractions = split_fractions or dict(DEFAULT_SPLIT_FRACTIONS)
        problem = split_fractions_problem(fractions)
        if problem:
            raise DatasetError(f"split fractions {problem}")
        fractions = dict(fractions)
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
        if not info_path.exists():
            raise DatasetError(f"{root} is not a dataset: {INFO} is missing (create one with "
                               "AnnotationDataset.create or lsms-data import-lvit)")
        try:
            info = json.loads(_read_regular(info_path).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{info_path} is not valid JSON: {exc}") from exc
        except OSError as exc:  # permissions, I/O errors: the validator reports, never raises
            raise DatasetError(f"{info_path}: cannot read ({exc.strerror or exc})") from exc
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise DatasetError(f"{info_path} does not describe an {FORMAT_NAME} dataset")
        if info.get("version") != FORMAT_VERSION:
            raise DatasetError(f"{root} is format version {info.get('version')}; this lsms-napari reads "
                               f"version {FORMAT_VERSION}")
        dataset = cls(root, info)
        try:
            dataset._read_new_lines()
        except OSError as exc:
            raise DatasetError(f"{dataset.manifest}: cannot read ({exc.strerror or exc})") from exc
        return dataset

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def _read_new_lines(self) -> None:
        """Parse lines appended since the last read (by us or by another process).

        A last line without its newline is a record when it parses as JSON (a hand edit or a
        script dropped the newline; the writer adds it before appending); only a tail that does not
        parse is a torn save (``torn_tail``), which the next save cuts away.
        """
        if not self.manifest.exists():
            return
        with os.fdopen(open_regular(self.manifest), "rb") as handle:
            status = os.fstat(handle.fileno())
            identity = (status.st_dev, status.st_ino)
            if self._manifest_file is not None and identity != self._manifest_file:
                self._forget_lines()  # renamed over since the last read: our offsets mean nothing in it
            self._manifest_file = identity
            handle.seek(self._offset)
            data = handle.read()
        if self._unterminated and data:
            self._unterminated = False
            if data.startswith(b"\n"):  # the newline that ends the line read last time
                data = data[1:]
                self._offset += 1
        end = data.rfind(b"\n") + 1
        tail = data[end:]
        complete_tail = _is_json(tail)
        self.torn_tail = bool(tail) and not complete_tail
        # orjson parses a line ~2.5x faster than json and shares key strings (half the memory); the
        # cyclic GC is paused because it would rescan every record built so far, again and again,
        # while none of them can be part of a cycle (docs/benchmarks.md, "Scale of data").
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._parse_lines(data + b"\n" if complete_tail else data[:end])
        finally:
            if gc_was_enabled:
                gc.enable()
        self._offset += len(data) if complete_tail else end
        self._unterminated = self._unterminated or complete_tail

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

    def select(self, split: str | None = None, expressions: bool = False) -> list[dict[str, Any]]:
        """The records of ``split`` (all for None), for training, evaluation and export. ``expressions``:
        only those whose words hold on their slice (``schema.words_hold``: not the other slices of a 3-D
        lesion whose words were read on one slice), for whatever learns or scores the words.

        Raises DatasetError, naming the manifest line, when any line is not a valid annotation (a line
        that is not JSON, or a record ``check_record`` refuses: a field missing or of the wrong type...):
        the validator calls such a dataset invalid, and a record used anyway would end in a KeyError or
        TypeError deep inside training. Lines are checked once, as they are read.
        """
        self.check_lines()
        return [r for r in self.records if (split is None or r.get("split") == split)
                and (not expressions or words_hold(r))]

    def check_lines(self) -> None:
        """DatasetError naming the first manifest line that is not a valid annotation, and how many there are."""
        while self._checked < len(self.records):
            problems = check_record(self.records[self._checked])
            if problems:
                self._invalid.append((self.record_lines[self._checked], problems))
            self._checked += 1
        bad = sorted([(line, message) for line, message in self.bad_lines]
                     + [(line, "; ".join(problems)) for line, problems in self._invalid])
        if bad:
            line, message = bad[0]
            more = f" (and {len(bad) - 1} more bad line(s))" if len(bad) > 1 else ""
            raise DatasetError(f"{self.manifest} line {line}: {message}{more}: this dataset does not validate, so "
                               f"it is not used; 'lsms-data validate {self.root}' lists every problem: fix or "
                               "remove those lines")

    def path(self, relative: str) -> Path:
        """The file a record names; never outside the dataset folder, whatever the line says."""
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            raise DatasetError(f"{relative!r} is not a path inside the dataset {self.root}")
        return self.root / relative

    def _regular_file(self, relative: str) -> Path:
        """``path(relative)``, checked to be a regular file: numpy and Pillow would wait forever on a FIFO."""
        path = self.path(relative)
        with contextlib.suppress(FileNotFoundError):  # the reader's own error names a missing file
            reason = not_regular_reason(os.stat(path).st_mode)
            if reason is not None:
                raise DatasetError(f"{path} is not a regular file but {reason}: replace it with the dataset's "
                                   "real file")
        return path

    def read_image(self, record: dict[str, Any]) -> np.ndarray:
        """The slice (H,W) in its stored units (HU for CT) as float32.

        The ``.npy`` header is read first: an image whose size is not the record's (height, width) is
        refused (DatasetError) before anything is loaded, whatever its size."""
        from ..image_io import NpyError, map_npy

        path = self._regular_file(record["image"])
        try:
            mapped = map_npy(path)  # the header only; nothing is read or unpickled
        except NpyError as exc:
            raise DatasetError(f"{path}: not a plain numeric .npy image ({exc})") from exc
        expected = (record.get("height"), record.get("width"))
        if tuple(mapped.shape) != expected:
            raise DatasetError(f"{path} is {'x'.join(map(str, mapped.shape))} but annotation {record.get('id')!r} "
                               f"says {expected[0]}x{expected[1]}: the dataset is damaged; run lsms-data validate")
        return np.array(mapped, dtype=np.float32)

    def read_mask(self, record: dict[str, Any], key: str = "mask") -> np.ndarray:
        """The (H,W) bool mask of an annotation (``key='proposal'`` for the model's proposal)."""
        from PIL import Image

        relative = record["mask"] if key == "mask" else record.get("provenance", {}).get("proposal")
        if relative is None:
            raise DatasetError(f"annotation {record.get('id')} has no {key} mask")
        path = self._regular_file(relative)
        try:
            image = Image.open(path)  # lazy: the size is known before anything is decoded
        except Image.DecompressionBombError as exc:
            raise DatasetError(f"{path}: the mask is far larger than any image ({exc})") from None
        with image:
            expected = (record.get("width"), record.get("height"))
            if all(isinstance(v, int) for v in expected) and image.size != expected:
                raise DatasetError(f"{path} is {image.size[1]}x{image.size[0]} but annotation {record.get('id')!r} "
                                   f"says {expected[1]}x{expected[0]}: a mask of another image; run lsms-data validate")
            return np.asarray(image.convert("L")) > 0

    def split_of_group(self, group: str) -> str | None:
        return self._group_split.get(group)

    def split_fractions(self) -> dict[str, float]:
        """``dataset.json``'s split fractions (for new split groups); DatasetError when they are unusable."""
        fractions = self.info.get("split_fractions", DEFAULT_SPLIT_FRACTIONS)
        problem = split_fractions_problem(fractions)
        if problem:
            example = json.dumps({"split_fractions": DEFAULT_SPLIT_FRACTIONS})[1:-1]
            raise DatasetError(f"{self.root / INFO}: split_fractions {problem}; a new split group cannot be given a "
                               f"split: fix dataset.json, e.g. {example}")
        return fractions

    # --- writing ------------------------------------------------------------------------
    def add(self, image: np.ndarray, mask: np.ndarray, text: str, *, split_group: str, modality: str,
            units: str, patient_key: str | None = None, split: str | None = None,
            spacing_mm: tuple[float, float] | None = None, window: dict | None = None,
            attributes: dict[str, Any] | None = None, expression_kinds: list[str] | None = None,
            source: dict[str, Any] | None = None, model: dict[str, str] | None = None,
            proposal: np.ndarray | None = None, user: str | None = None,
            annotation_id: str | None = None, identifiers: dict[str, str] | None = None,
            include_identifiers: bool = False, instance: int | None = None, origin: str | None = None,
            replaces: str | None = None) -> dict[str, Any]:
        """Save one annotation (image file shared by content, mask, proposal, manifest line).

        image (H,W) in physical units; mask and proposal (H,W) binary. ``split`` None keeps
        the split the group already has, or assigns one from its hash for a new group.
        ``identifiers`` (DICOM keyword -> text, see lsms_core.privacy.dicom_identifiers) are
        stored, under the line's ``identifiers`` field, only when ``include_identifiers`` is
        True: by default a dataset holds pseudonymous keys and no patient identifier.
        ``instance`` numbers the lesion the mask outlines among the lesions of its slice (the same
        number on every annotation of that lesion; None when unknown or when the mask covers
        several or none): the referring metrics use it (lsms_core.referring).
        ``origin`` says how the mask was made (``provenance.origin``, e.g. "hand-drawn" for a mask
        drawn without a model's proposal); None leaves it out.
        ``replaces``: the id of an annotation this one updates: the new line takes the old line's
        place in one atomic rename of the manifest (``provenance.replaces`` names the old id) and the
        old mask files (and its image, when no other line uses it) are removed afterwards. DatasetError
        when that id is not in the dataset.
        Returns the record written. Raises DatasetError, writing nothing, if it is invalid.
        """
        arguments = {name: value for name, value in locals().items() if name != "self"}
        pending = self._prepare(arguments)
        return self._commit([pending], replaces=[replaces] if replaces is not None else [])[0]

    def add_many(self, annotations: list[dict[str, Any]], replacing: list[str] | tuple[str, ...] = ()
                 ) -> list[dict[str, Any]]:
        """Save several annotations together (the slices of one 3-D lesion): each dict holds ``add``'s
        arguments (``image``, ``mask``, ``text`` and its keywords, without ``replaces``). Every one is
        checked before anything is written; then their files are written and their lines appended in one
        write under the lock. ``replacing``: ids of earlier annotations to remove in the same atomic
        rewrite of the manifest (the new lines are appended after the others; the old files go when no line
        uses them). Returns the records written; DatasetError, writing nothing, if one is invalid."""
        if not annotations:
            raise DatasetError("nothing to save: no annotation given")
        signature = inspect.signature(AnnotationDataset.add)
        pending = []
        for entry in annotations:
            bound = signature.bind(self, **entry)  # TypeError for a missing or unknown argument, as add gives
            bound.apply_defaults()
            pending.append(self._prepare({k: v for k, v in bound.arguments.items() if k != "self"}))
        return self._commit(pending, replaces=list(replacing), append_after_rewrite=True)

    def _prepare(self, arguments: dict[str, Any]) -> "_Pending":
        """One annotation's record (its split still to resolve under the lock) and the files it needs, from
        ``add``'s arguments (by name); DatasetError for pixels or masks that cannot be saved. Writes nothing."""
        a = arguments
        image, mask, proposal, replaces = a["image"], a["mask"], a["proposal"], a["replaces"]
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
        if pixels.dtype.kind == "f" and pixels.size and float(np.abs(pixels).max()) > _FLOAT32_MAX:
            raise DatasetError(f"the image has values up to {float(np.abs(pixels).max()):.3g} in magnitude, beyond "
                               f"what 32-bit floats hold ({_FLOAT32_MAX:.3g}; training reads float32): the image is "
                               "damaged or wrongly scaled")
        record_id = a["annotation_id"] or uuid.uuid4().hex[:16]
        image_bytes = encode_npy(pixels)
        image_rel = _image_name(image_bytes)
        edit_dice = None
        if proposal is not None:
            from ..metrics import dice_iou

            edit_dice = round(dice_iou(np.asarray(proposal, bool), mask.astype(bool))[0], 6)
        proposal_path = f"masks/{record_id}.proposal.png" if proposal is not None else None
        provenance = {"model": a["model"], "proposal": proposal_path, "edit_dice": edit_dice,
                      "user": a["user"] or _user_name(), "saved_at": now_iso(), "tool": "lsms-napari"}
        if a["origin"] is not None:
            provenance["origin"] = a["origin"]
        if replaces is not None:
            provenance["replaces"] = replaces
        record = {"id": record_id, "image": image_rel, "mask": f"masks/{record_id}.png",
                  "height": int(pixels.shape[0]), "width": int(pixels.shape[1]),
                  "text": " ".join(a["text"].split()),
                  "attributes": {k: v for k, v in (a["attributes"] or {}).items() if v not in (None, "")},
                  "expression_kinds": list(a["expression_kinds"] or []), "modality": a["modality"],
                  "units": a["units"],
                  "spacing_mm": [float(v) for v in a["spacing_mm"]] if a["spacing_mm"] is not None else None,
                  "window": a["window"], "split": a["split"] or "", "split_group": a["split_group"],
                  "patient_key": a["patient_key"] or a["split_group"], "source": a["source"] or {},
                  "provenance": provenance}
        if a["instance"] is not None:
            record["instance"] = int(a["instance"])
        if a["include_identifiers"] and a["identifiers"]:
            record["identifiers"] = {str(k): str(v) for k, v in a["identifiers"].items()}
        files = [(image_rel, image_bytes, True), (record["mask"], encode_mask_png(mask), False)]
        if proposal is not None:
            files.append((provenance["proposal"], encode_mask_png(proposal), False))
        return _Pending(record, a["split"], files)

    def _commit(self, pending: list["_Pending"], replaces: list[str], append_after_rewrite: bool = False
                ) -> list[dict[str, Any]]:
        """Under the lock: resolve splits, check every record, write the files, then append the lines (one
        write) or rewrite the manifest (``replaces``: each old id's line takes the first new line in place,
        or, with ``append_after_rewrite``, every old line goes and the new ones follow the others)."""
        with _exclusive_lock(self.root / LOCK):
            self._sweep_temporary_files()
            self._read_new_lines()
            lines = []
            groups: dict[str, str] = {}
            for item in pending:
                record = item.record
                if record["id"] in self._ids or any(line_id == record["id"] for line_id, _ in lines):
                    raise DatasetError(f"annotation id {record['id']} already exists in {self.root}")
                group = record["split_group"]
                known = self._group_split.get(group) or groups.get(group)
                if item.split is None:
                    record["split"] = known or _split_for_new_group(group, self.split_fractions())
                elif known is not None and known != item.split:
                    raise DatasetError(f"group {group!r} is already in split {known!r}; splits are fixed per "
                                       "patient so that no patient is in two splits")
                groups[group] = record["split"]
                problems = check_record(record)
                if problems:
                    raise DatasetError(f"invalid annotation: {'; '.join(problems)}")
                try:
                    line = json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False)
                except (TypeError, ValueError) as exc:  # NaN/inf or a non-JSON value in a nested field
                    raise DatasetError(f"invalid annotation: {exc}") from exc
                lines.append((record["id"], line))
            for old_id in replaces:
                if old_id not in self._ids:
                    raise DatasetError(f"annotation {old_id} is not in {self.root} (removed or replaced meanwhile?): "
                                       "nothing to update; save this one as a new annotation")
            written = []
            for relative, data, shared in (f for item in pending for f in item.files):
                path = self.path(relative)
                if shared and path.exists():
                    continue  # an image shared by content is never rewritten
                atomic_write_bytes(path, data)
                written.append(relative)
            if not replaces:
                self._append_lines([line for _, line in lines])
                return [item.record for item in pending]
            if append_after_rewrite:
                new_lines = {old_id: None for old_id in replaces}
                appended = [line.encode() for _, line in lines]
            else:
                new_lines, appended = {replaces[0]: lines[0][1].encode()}, []
            try:
                old = self._rewrite_manifest(new_lines, appended)
            except BaseException:  # the old lines stand: the new files would only be orphans
                for relative in written:
                    with contextlib.suppress(OSError):
                        self.path(relative).unlink()
                raise
            for record in old.values():
                self._remove_unused_files(record)
        return [item.record for item in pending]

    def set_group_split(self, group: str, split: str) -> int:
        """Move every annotation of split group ``group`` to ``split`` (one atomic manifest rewrite);
        the number of lines changed. DatasetError for an unknown group or split, or when an image of the
        group is also used by another group in another split (the same slice would be in two splits)."""
        if split not in SPLITS:
            raise DatasetError(f"split {split!r} must be one of {', '.join(SPLITS)}")
        with _exclusive_lock(self.root / LOCK):
            self._sweep_temporary_files()
            self._read_new_lines()
            self.check_lines()
            mine = [r for r in self.records if r["split_group"] == group]
            if not mine:
                known = sorted(self._group_split)
                raise DatasetError(f"{self.root} has no split group {group!r} (groups: {', '.join(known[:10])}"
                                   f"{' ...' if len(known) > 10 else ''})")
            images = {r["image"] for r in mine}
            clash = next((r for r in self.records if r["split_group"] != group and r["image"] in images
                          and r["split"] != split), None)
            if clash is not None:
                raise DatasetError(f"image {clash['image']} of group {group!r} is also annotated in group "
                                   f"{clash['split_group']!r} ({clash['split']}): moving one group would put the "
                                   "same slice in two splits; move both groups")
            changed = {r["id"]: json.dumps({**r, "split": split}, ensure_ascii=False, sort_keys=True,
                                           allow_nan=False).encode() for r in mine if r["split"] != split}
            if changed:
                self._rewrite_manifest(changed)
        return len(changed)

    def _rewrite_manifest(self, new_lines: dict[str, bytes | None], appended: list[bytes] | None = None
                          ) -> dict[str, dict[str, Any]]:
        """Replace the lines of the ids in ``new_lines`` (id -> new line without newline, or None to remove
        it) and add ``appended`` lines at the end, by one atomic rename of a complete new manifest; every
        other line is kept byte for byte (a torn tail, a crashed save's, is dropped). Returns the old
        records by id. Call under the lock, after ``_read_new_lines``."""
        data = _read_regular(self.manifest)
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" after the final newline, an unterminated line, or a torn tail
        if _is_json(tail):
            lines.append(tail)
        old: dict[str, dict[str, Any]] = {}
        for number, raw in enumerate(lines):
            try:
                record = orjson.loads(raw) if raw.strip() else None
            except ValueError:
                continue  # a bad line stays as it is (the validator names it)
            if isinstance(record, dict) and record.get("id") in new_lines:
                if record["id"] in old:
                    raise DatasetError(f"annotation id {record['id']} is on two lines of {self.manifest}: fix the "
                                       "duplicate first (lsms-data validate names both)")
                old[record["id"]] = record
                lines[number] = new_lines[record["id"]]
        missing = sorted(set(new_lines) - set(old))
        if missing:
            raise DatasetError(f"annotation(s) {', '.join(missing)} are not in {self.manifest}")
        lines = [line for line in lines if line is not None] + list(appended or [])
        atomic_write_bytes(self.manifest, b"\n".join(lines) + b"\n")
        self._read_new_lines()  # the new file: everything is read again
        return old

    def _remove_unused_files(self, old: dict[str, Any]) -> None:
        """After a replace: delete the old record's mask, proposal and image when no line uses them.
        A failure leaves unreferenced files (the validator warns), never a broken line."""
        used = {r.get(key) for r in self.records for key in ("image", "mask")}
        used |= {r.get("provenance", {}).get("proposal") for r in self.records}
        for relative in (old.get("mask"), old.get("image"), old.get("provenance", {}).get("proposal")):
            if isinstance(relative, str) and relative not in used:
                with contextlib.suppress(OSError, DatasetError):
                    self.path(relative).unlink()

    def _sweep_temporary_files(self) -> None:
        """Remove the temporary files (``.<name>.<random>.tmp``) of saves that were killed mid-write.

        Called under the append lock, where every write into images/ and masks/ happens, so a
        temporary file found there belongs to a process that died; once per opened dataset.
        """
        if self._swept:
            return
        self._swept = True
        for folder in ("images", "masks", "."):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.root / folder) as entries:
                for entry in entries:
                    if entry.name.startswith(".") and entry.name.endswith(".tmp") and (
                            folder != "." or entry.name.startswith(f".{MANIFEST}.")):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)

    def _append_lines(self, lines: list[str]) -> None:
        """Append manifest lines in a single write, after cutting a torn tail a crash left."""
        data = "".join(line + "\n" for line in lines).encode()
        if self._unterminated:  # the last line is complete but lacks its newline: end it, never cut it
            data = b"\n" + data
        fd = open_regular(self.manifest, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            if size > self._offset:  # bytes after the last complete line that do not parse: an interrupted save
                os.ftruncate(fd, self._offset)
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            if exc.filename is None:  # os.write names no file: "[Errno 28] No space left on device"
                raise OSError(exc.errno, exc.strerror, str(self.manifest)) from exc
            raise
        finally:
            os.close(fd)
        self._read_new_lines()


@dataclass
class _Pending:
    """An annotation about to be saved: its record, the split asked for (None: the group's, or drawn) and
    its files as (relative path, bytes, shared by content: written only when absent)."""

    record: dict[str, Any]
    split: str | None
    files: list[tuple[str, bytes, bool]]


def _is_json(text: bytes) -> bool:
    """True when ``text`` (a manifest's last line without newline) is a complete JSON value."""
    if not text.strip():
        return False
    try:
        orjson.loads(text)
    except ValueError:
        return False
    return True


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
