"""The annotation record of a RefHL-Seg-style dataset: field names, types and checks.

One JSON object per line of ``annotations.jsonl``; docs/dataset-format.md describes every field.
``check_record`` is the single definition of a valid record, used by the writer (before a
line is written) and by the validator (for lines already on disk).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..expressions import MAX_EXPRESSION_INPUT_CHARS, has_visible_text
from ..limits import MAX_SIDE, MAX_SLICE_PIXELS
from ..privacy import IDENTIFIER_FIELDS

FORMAT_NAME = "lsms-refseg"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
UNITS = ("HU", "raw")
ATTRIBUTE_FIELDS = ("lesion_type", "location", "segment", "diameter_mm", "shape", "boundary",
                    "enhancement", "density", "size", "position", "count", "notes")
EXPRESSION_KINDS = ("type", "location", "position", "size", "shape", "boundary", "enhancement", "density",
                    "count", "diameter")
# Expression kinds that describe a 3-D lesion as a whole, so they hold on each of its slices. Size ranks,
# positions on the slice, counts, shapes and diameters are judged on one cross-section: on a lesion's other
# slices than the one the words were read on they may be false (``words_hold``).
LESION_WIDE_KINDS = frozenset({"type", "location", "boundary", "enhancement", "density"})
_ID = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
_KEY = re.compile(r"^[A-Za-z0-9:_./-]{1,128}$")

REQUIRED = {"id": str, "image": str, "mask": str, "height": int, "width": int, "text": str, "split": str,
            "split_group": str, "patient_key": str, "modality": str, "units": str}
OPTIONAL = {"attributes": dict, "expression_kinds": list, "spacing_mm": (list, type(None)),
            "window": (dict, type(None)), "source": dict, "provenance": dict, "identifiers": dict, "instance": (int, type(None))}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_relative_path(value: str, folder: str) -> str | None:
    if not value.startswith(folder + "/") or ".." in value.split("/") or "\\" in value:
        return f"must be a path inside {folder}/ (got {value!r})"
    return None


def check_record(record: Any) -> list[str]:
    """Every problem of one annotation record, as short phrases (empty list: valid)."""
    if not isinstance(record, dict):
        return [f"is a JSON {type(record).__name__}, not an object"]
    problems = []
    for name, kind in REQUIRED.items():
        if name not in record:
            problems.append(f"missing field '{name}'")
        elif not isinstance(record[name], kind) or isinstance(record[name], bool):
            problems.append(f"field '{name}' must be {kind.__name__}, got {type(record[name]).__name__}")
    for name, kind in OPTIONAL.items():
        if name in record and not isinstance(record[name], kind):
            problems.append(f"field '{name}' has the wrong type ({type(record[name]).__name__})")
    unknown = set(record) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        problems.append(f"unknown fields {sorted(unknown)}")
    if problems:
        return problems
    if not _ID.match(record["id"]):
        problems.append(f"id {record['id']!r} must be 4-64 letters, digits, '-' or '_'")
    for name, folder in (("image", "images"), ("mask", "masks")):
        issue = _check_relative_path(record[name], folder)
        if issue:
            problems.append(f"'{name}' {issue}")
    if record["height"] < 1 or record["width"] < 1:
        problems.append("height and width must be positive")
    elif record["height"] * record["width"] > MAX_SLICE_PIXELS or max(record["height"], record["width"]) > MAX_SIDE:
        problems.append(f"the slice is {record['height']}x{record['width']} ({record['height'] * record['width']:,} "
                        f"pixels): more than the {MAX_SLICE_PIXELS:,} pixels (and {MAX_SIDE:,} per side) a slice may "
                        "have; downsample it")
    if len(record["text"]) > MAX_EXPRESSION_INPUT_CHARS:
        problems.append(f"expression 'text' is {len(record['text']):,} characters long; at most "
                        f"{MAX_EXPRESSION_INPUT_CHARS:,}")
    elif not has_visible_text(record["text"]):
        problems.append("empty expression 'text' (nothing visible: only spaces, zero-width or control characters)")
    if record["split"] not in SPLITS:
        problems.append(f"split {record['split']!r} must be one of {', '.join(SPLITS)}")
    if record["units"] not in UNITS:
        problems.append(f"units {record['units']!r} must be one of {', '.join(UNITS)}")
    for name in ("split_group", "patient_key"):
        if not _KEY.match(record[name]):
            problems.append(f"{name} {record[name]!r} must be 1-128 letters, digits or :_./-")
    spacing = record.get("spacing_mm")
    if spacing is not None and (len(spacing) != 2 or not all(_is_number(v) and v > 0 for v in spacing)):
        problems.append(f"spacing_mm must be two positive numbers (row, column) or null, got {spacing!r}")
    window = record.get("window")
    if window is not None:
        if not (_is_number(window.get("center")) and _is_number(window.get("width")) and window["width"] > 0):
            problems.append(f"window needs a numeric center and a positive width, got {window!r}")
    for kind in record.get("expression_kinds", []):
        if kind not in EXPRESSION_KINDS:
            problems.append(f"expression kind {kind!r} must be one of {', '.join(EXPRESSION_KINDS)}")
    attributes = record.get("attributes", {})
    for name, value in attributes.items():
        if name not in ATTRIBUTE_FIELDS:
            problems.append(f"unknown attribute {name!r} (known: {', '.join(ATTRIBUTE_FIELDS)})")
        elif name == "diameter_mm" and value is not None and not (_is_number(value) and value > 0):
            problems.append(f"attribute diameter_mm must be a positive number, got {value!r}")
    instance = record.get("instance")
    if instance is not None and (isinstance(instance, bool) or instance < 0):
        problems.append(f"instance must be a lesion number >= 0 on its slice, or null, got {instance!r}")
    provenance = record.get("provenance", {})
    edit = provenance.get("edit_dice")
    if edit is not None and not (_is_number(edit) and 0 <= edit <= 1):
        problems.append(f"provenance.edit_dice must be in [0, 1], got {edit!r}")
    for name, value in record.get("identifiers", {}).items():
        if name not in IDENTIFIER_FIELDS or not isinstance(value, str):
            problems.append(f"identifiers.{name} must be one of {', '.join(IDENTIFIER_FIELDS)} with a text value")
    proposal = provenance.get("proposal")
    if proposal is not None:
        issue = _check_relative_path(proposal, "masks") if isinstance(proposal, str) else "must be a path"
        if issue:
            problems.append(f"provenance.proposal {issue}")
    return problems


def words_hold(record: dict[str, Any]) -> bool:
    """Whether a record's words describe its mask on its own slice: always for a 2-D annotation and for the
    seed slice of a 3-D lesion (``source.seed_slice``, where the user read them); on the lesion's other
    slices only when every kind of the expression is lesion-wide (``LESION_WIDE_KINDS``; words of unknown
    kinds: no). Training and evaluation of expressions use only these; the lesion finder, which reads "all
    lesions", learns from every slice's mask."""
    source = record.get("source") or {}
    if "lesion_id" not in source or source.get("slice_index") == source.get("seed_slice"):
        return True
    kinds = set(record.get("expression_kinds") or ())
    return bool(kinds) and kinds <= LESION_WIDE_KINDS
