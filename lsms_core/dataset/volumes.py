"""3-D lesions in an annotation dataset: one line per slice in ``annotations.jsonl`` (the format's unit
stays the slice, so training reads them as any other), tied by ``source.lesion_id`` and
``source.series_key``, plus one *volume record* per lesion in ``volumes.jsonl`` (docs/dataset-format.md,
"3-D lesions").

The format stays version 1: ``source`` is free-form in version 1 and ``volumes.jsonl`` is a file a version-1
reader does not know and so leaves alone. The volume record is written last: a lesion whose save was
interrupted has slice lines (valid annotations) but no record, which the validator reports.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..atomic import atomic_write_bytes
from ..files import array_sha256
from .schema import LESION_WIDE_KINDS, SPLITS, words_hold  # noqa: F401 (re-exported)
from .store import LOCK, AnnotationDataset, DatasetError, _exclusive_lock, _read_regular, now_iso, open_regular

VOLUMES = "volumes.jsonl"
VOLUME_FIELDS = {"id": str, "series_key": str, "text": str, "attributes": dict, "expression_kinds": list,
                 "annotations": list, "slices": list, "seed_slice": int, "shape": list,
                 "spacing_mm": (list, type(None)),
                 "measurements": dict, "followed": (dict, type(None)), "split": str, "split_group": str,
                 "patient_key": str, "provenance": dict}


def volume_key(pixels: np.ndarray | None = None, sha256: str | None = None) -> str:
    """The series key of a (Z,H,W) volume: ``v-`` + 16 hex of its ``array_sha256`` (pass ``sha256`` when it is
    known already: hashing a series takes a while). The same series opened again gets the same key; no
    identifier goes into it."""
    return f"v-{(sha256 or array_sha256(pixels))[:16]}"


@dataclass
class SavedLesion:
    """What ``save_lesion`` wrote: the volume record and the slice records (in slice order)."""

    volume: dict[str, Any]
    records: list[dict[str, Any]]


def save_lesion(dataset: AnnotationDataset, pixels: np.ndarray, mask: np.ndarray, *, text: str, seed_slice: int,
                split_group: str, modality: str, units: str, series_key: str | None = None,
                patient_key: str | None = None, split: str | None = None,
                spacing_mm: tuple[float, float] | None = None, slice_spacing_mm: float | None = None,
                window: dict | None = None, attributes: dict[str, Any] | None = None,
                expression_kinds: list[str] | None = None, slice_sources: list[dict] | None = None,
                model: dict | None = None, proposal: np.ndarray | None = None, seed_origin: str | None = None,
                followed: dict | None = None, measurements: dict | None = None,
                identifiers: list[dict[str, str] | None] | None = None, include_identifiers: bool = False,
                replaces: str | None = None) -> SavedLesion:
    """Save one 3-D lesion: a line per slice where ``mask`` is set, then its volume record.

    pixels (Z,H,W) in physical units (HU for CT); mask and proposal (Z,H,W) binary (the proposal: what the
    follower drew before the user edited it, for each slice's ``edit_dice``). ``seed_slice``: the slice the
    words were read on. ``slice_sources[z]``: the ``source`` fields of slice z (file hash, SOP UID hash);
    ``identifiers[z]`` its DICOM identifiers, stored only with ``include_identifiers``. ``replaces``: the
    lesion id of an earlier save of this lesion, whose slice lines and record are replaced (one atomic
    rewrite of each file). DatasetError, writing nothing, when the lesion cannot be saved.
    """
    pixels, mask = np.asarray(pixels), np.asarray(mask) > 0
    if pixels.ndim != 3 or mask.shape != pixels.shape:
        raise DatasetError(f"a 3-D lesion needs a (Z,H,W) volume and a mask of its shape, got {pixels.shape} and "
                           f"{mask.shape}")
    if proposal is not None and np.asarray(proposal).shape != pixels.shape:
        raise DatasetError(f"the followed proposal is {np.asarray(proposal).shape}, the volume {pixels.shape}")
    slices = [int(z) for z in np.flatnonzero(mask.reshape(len(mask), -1).any(1))]
    if not slices:
        raise DatasetError("the lesion's mask is empty on every slice: draw or follow it first")
    if not 0 <= seed_slice < len(pixels) or seed_slice not in slices:
        raise DatasetError(f"the seed slice {seed_slice} is not one of the lesion's slices ({slices[0]}-{slices[-1]})")
    series_key = series_key or volume_key(pixels)
    lesion_id = uuid.uuid4().hex[:16]
    old_ids: list[str] = []
    if replaces is not None:
        earlier = next((v for v in read_volume_records(dataset) if v["id"] == replaces), None)
        if earlier is None:
            raise DatasetError(f"lesion {replaces} is not in {dataset.root} (removed or replaced meanwhile?): nothing "
                               "to update; save this one as a new lesion")
        old_ids = list(earlier["annotations"])
    entries = []
    for z in slices:
        source = {**((slice_sources or [{}] * len(pixels))[z] or {}), "series_key": series_key, "slice_index": z,
                  "seed_slice": int(seed_slice), "lesion_id": lesion_id}
        entries.append(dict(
            image=pixels[z], mask=mask[z], text=text, split_group=split_group, modality=modality, units=units,
            patient_key=patient_key, split=split, spacing_mm=spacing_mm, window=window, attributes=attributes,
            expression_kinds=expression_kinds, source=source, model=model,
            proposal=None if proposal is None else np.asarray(proposal[z]) > 0,
            identifiers=(identifiers or [None] * len(pixels))[z], include_identifiers=include_identifiers,
            origin=seed_origin if z == seed_slice else "followed"))
    records = dataset.add_many(entries, replacing=old_ids)
    first = records[0]
    provenance = {"model": model, "user": first["provenance"]["user"], "saved_at": now_iso(), "tool": "lsms-napari"}
    if replaces is not None:
        provenance["replaces"] = replaces
    volume = {"id": lesion_id, "series_key": series_key, "text": first["text"], "attributes": first["attributes"],
              "expression_kinds": first["expression_kinds"], "annotations": [r["id"] for r in records],
              "slices": slices, "seed_slice": int(seed_slice), "shape": [int(n) for n in pixels.shape],
              "spacing_mm": None if spacing_mm is None else
              [float(slice_spacing_mm) if slice_spacing_mm else None, *map(float, spacing_mm)],
              "measurements": measurements or {}, "followed": followed, "split": first["split"],
              "split_group": split_group, "patient_key": first["patient_key"], "provenance": provenance}
    _write_volume_record(dataset, volume, replaces)
    return SavedLesion(volume, records)


def _write_volume_record(dataset: AnnotationDataset, volume: dict, replaces: str | None) -> None:
    """Append the record to ``volumes.jsonl`` (one write, fsynced), or with ``replaces`` rewrite the file with
    the old record's line replaced (atomic rename); under the dataset's lock."""
    line = json.dumps(volume, ensure_ascii=False, sort_keys=True, allow_nan=False).encode()
    path = dataset.root / VOLUMES
    with _exclusive_lock(dataset.root / LOCK):
        data = _read_regular(path) if path.exists() else b""
        if replaces is not None:
            kept = [raw for raw in data.split(b"\n")[:-1] if raw.strip() and _record_id(raw) != replaces]
            atomic_write_bytes(path, b"".join(raw + b"\n" for raw in kept + [line]))
            return
        fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            if data and not data.endswith(b"\n"):  # a torn tail of an interrupted save: cut it
                os.ftruncate(fd, data.rfind(b"\n") + 1)
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


def _record_id(raw: bytes) -> str | None:
    try:
        record = orjson.loads(raw)
    except ValueError:
        return None
    return record.get("id") if isinstance(record, dict) else None


def read_volume_records(dataset: AnnotationDataset) -> list[dict[str, Any]]:
    """The volume records of ``volumes.jsonl`` in file order ([] when there is none); an incomplete last line
    (an interrupted save) is ignored. DatasetError for a line that is not a JSON object."""
    path = dataset.root / VOLUMES
    if not path.exists():
        return []
    data = _read_regular(path)
    records = []
    for number, raw in enumerate(data.split(b"\n")[:-1], start=1):  # what follows the last newline is torn
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except ValueError as exc:
            raise DatasetError(f"{path} line {number} is not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise DatasetError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records


def check_volume_record(volume: Any, by_id: dict[str, dict]) -> list[str]:
    """Every problem of one volume record against the dataset's annotations (``by_id``: id -> record)."""
    if not isinstance(volume, dict):
        return ["is not a JSON object"]
    problems = [f"missing or mistyped field '{name}'" for name, kind in VOLUME_FIELDS.items()
                if not isinstance(volume.get(name), kind) or isinstance(volume.get(name), bool)]
    if problems:
        return problems
    if not all(isinstance(a, str) for a in volume["annotations"]) or not all(
            isinstance(z, int) and not isinstance(z, bool) for z in volume["slices"]):
        return ["'annotations' must be annotation ids and 'slices' slice numbers"]
    if volume["split"] not in SPLITS:
        problems.append(f"split {volume['split']!r} must be one of {', '.join(SPLITS)}")
    if len(volume["annotations"]) != len(volume["slices"]):
        problems.append(f"{len(volume['annotations'])} annotations for {len(volume['slices'])} slices")
    for annotation_id, z in zip(volume["annotations"], volume["slices"]):
        record = by_id.get(annotation_id)
        if record is None:
            problems.append(f"annotation {annotation_id} (slice {z}) is not in annotations.jsonl")
            continue
        source = record.get("source") or {}
        if (source.get("lesion_id"), source.get("series_key"), source.get("slice_index")) != (
                volume["id"], volume["series_key"], z):
            problems.append(f"annotation {annotation_id} is not slice {z} of lesion {volume['id']} of series "
                            f"{volume['series_key']}")
        elif record.get("split") != volume["split"]:
            problems.append(f"annotation {annotation_id} is in split {record.get('split')!r}, the lesion in "
                            f"{volume['split']!r}")
    if volume["seed_slice"] not in volume["slices"]:
        problems.append(f"seed slice {volume['seed_slice']} is not one of its slices")
    return problems


def lesion_mask(dataset: AnnotationDataset, volume: dict[str, Any]) -> np.ndarray:
    """The lesion's (Z,H,W) bool mask, rebuilt from its slices' masks."""
    by_id = {r["id"]: r for r in dataset.records}
    problems = check_volume_record(volume, by_id)
    if problems:
        raise DatasetError(f"lesion {volume.get('id')}: {'; '.join(problems)}")
    mask = np.zeros(volume["shape"], dtype=bool)
    for annotation_id, z in zip(volume["annotations"], volume["slices"]):
        mask[z] = dataset.read_mask(by_id[annotation_id])
    return mask
