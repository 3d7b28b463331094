"""What a model was trained on (its domain), and whether an image lies outside it (no Qt).

A model's domain is part of its card: modality, units, body region, the input window and size.
A checkpoint states it in its ``extra["domain"]`` metadata when its maker knew it; otherwise it is
derived from the checkpoint's preprocessing config (window, input size) and this project's
training data (lsms-train's datasets here are abdominal CT in HU: RefLiTS, synthetic lesions on it).

``outside_domain(image, domain)`` says why an image is outside, from its DICOM header first
(Modality, BodyPartExamined) and, where the header is silent, from intensity statistics: values
that are not Hounsfield units, a ring of bone enclosing most of the body (a skull: head CT), lungs
filling much of the body (chest CT). An empty list means nothing says it is outside; it does not
prove that the image is inside.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# DICOM BodyPartExamined terms (PS3.16 CID 4031, and what scanners write) that show the liver's region.
ABDOMINAL_TERMS = ("ABD", "LIVER", "HEPAT", "PANCREAS", "KIDNEY", "RENAL", "SPLEEN", "STOMACH", "GALLBLADDER",
                   "BILIARY", "TORSO", "TRUNK", "WHOLEBODY", "CHESTABD", "ABDOMENPELVIS")

# Intensity statistics (HU). Thresholds measured on every slice of the LiTS volume (abdomen: skull-ring
# share <= 0.17, lung share <= 0.013) and pydicom-data's head CT 693_UNCI.dcm (skull-ring share 0.88).
BODY_HU = -500.0  # above: body (air and lung are below)
BONE_HU = 300.0
LUNG_HU = (-950.0, -500.0)
SKULL_SHARE = 0.5  # bone ring enclosing at least this share of the body: a head
LUNG_SHARE = 0.25  # lung filling at least this share of the body: a chest
PADDING_HU = -1500.0  # below: the scanner's padding outside the field of view (e.g. -3024), not tissue
HU_RANGE = (-1100.0, 3100.0)  # where (almost) all of a CT slice's tissue values lie
MIN_BELOW_WATER = 0.02  # share of HU values below -30 (fat, air): none at all means not HU


@dataclass(frozen=True)
class ModelDomain:
    """What a model was trained on. ``modalities``: DICOM Modality values; ``units``: "HU" (or "raw");
    ``body_regions``: words for the card; ``body_part_terms``: BodyPartExamined substrings inside the
    domain; ``window``: (centre, width) of the input window in ``units``; ``input_size``: the model's
    square input side; ``source``: "checkpoint" (stated in it) or "derived" (from its preprocessing)."""

    modalities: tuple[str, ...] = ("CT",)
    units: str = "HU"
    body_regions: tuple[str, ...] = ("abdomen", "liver")
    body_part_terms: tuple[str, ...] = ABDOMINAL_TERMS
    window: tuple[float, float] | None = (50.0, 400.0)
    input_size: int | None = None
    source: str = "derived"

    def describe(self) -> str:
        """'CT in HU of the abdomen (liver), window L50/W400, 256x256 input'."""
        parts = [f"{'/'.join(self.modalities) or 'any modality'}"
                 + (f" in {self.units}" if self.units else "")
                 + (f" of the {self.body_regions[0]}" if self.body_regions else "")
                 + (f" ({', '.join(self.body_regions[1:])})" if len(self.body_regions) > 1 else "")]
        if self.window is not None:
            parts.append(f"window L{self.window[0]:g}/W{self.window[1]:g}")
        if self.input_size:
            parts.append(f"{self.input_size}x{self.input_size} input")
        return ", ".join(parts)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready (what a checkpoint's ``extra["domain"]`` holds)."""
        record = asdict(self)
        record.pop("source")
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], preprocess=None) -> "ModelDomain":
        """A stated domain (``extra["domain"]``); keys it lacks come from ``preprocess`` (PreprocessConfig)
        and the defaults (units HU and the preprocessing's window for CT only, else "raw" and none).
        Accepts "modality"/"body_region" as single values too."""
        base = derive_domain(preprocess)
        modalities = record.get("modalities", record.get("modality", base.modalities))
        regions = _strings(record.get("body_regions", record.get("body_region", base.body_regions)))
        terms = record.get("body_part_terms")
        if terms is None:  # the default region's terms, or the stated regions' own names
            terms = base.body_part_terms if regions == base.body_regions else regions
        modalities = _strings(modalities, upper=True)
        units = str(record.get("units", "HU" if modalities == ("CT",) else "raw") or "")
        window = record.get("window", base.window if units == "HU" else None)  # a window in HU means CT
        window = tuple(float(v) for v in window) if window else None
        size = int(record.get("input_size", base.input_size) or 0) or None
        return cls(modalities=modalities, units=units, body_regions=regions,
                   body_part_terms=_strings(terms, upper=True), window=window, input_size=size, source="checkpoint")


def _strings(value, upper: bool = False) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else list(value or [])
    return tuple(str(v).upper() if upper else str(v) for v in values)


def derive_domain(preprocess=None) -> ModelDomain:
    """The domain of a checkpoint that does not state one: its preprocessing's window and input size;
    CT in HU of the abdomen (this project's training data)."""
    if preprocess is None:
        return ModelDomain()
    return ModelDomain(window=(float(preprocess.window_center), float(preprocess.window_width)),
                       input_size=int(preprocess.image_size))


def domain_of_checkpoint(config, extra: dict[str, Any] | None) -> ModelDomain:
    """The domain of a checkpoint with LSMSConfig ``config`` and metadata ``extra``."""
    stated = (extra or {}).get("domain")
    if isinstance(stated, dict):
        return ModelDomain.from_record(stated, config.preprocess)
    return derive_domain(config.preprocess)


def domain_of_training(records: list[dict[str, Any]], preprocess, inherited: ModelDomain | None = None) -> ModelDomain:
    """The domain lsms-train states in its checkpoints (``extra["domain"]``): the modalities and units of
    its training annotations ``records``, the run's window (HU only) and input size (``preprocess``).
    Annotations carry no body region: a fine-tuned model keeps the region of the model it started from
    (``inherited``); a model trained from scratch states none, so no image is refused for its region."""
    modalities = tuple(sorted({str(r.get("modality") or "OT").upper() for r in records})) or ("OT",)
    hounsfield = bool(records) and all(r.get("units") == "HU" for r in records)
    regions, terms = (inherited.body_regions, inherited.body_part_terms) if inherited is not None else ((), ())
    window = (float(preprocess.window_center), float(preprocess.window_width)) if hounsfield else None
    return ModelDomain(modalities=modalities, units="HU" if hounsfield else "raw", body_regions=regions,
                       body_part_terms=terms, window=window, input_size=int(preprocess.image_size),
                       source="checkpoint")


_CACHE: dict[tuple[str, int, int], ModelDomain] = {}


def model_domain(checkpoint: str | os.PathLike = "default") -> ModelDomain:
    """The domain of a checkpoint file ("default": the shipped model), read from its safetensors header
    only (no weights are read); cached per file version. CheckpointError when the file is not a checkpoint."""
    from .checkpoint import read_stored_config, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE[key] = domain_of_checkpoint(*read_stored_config(path))
    return _CACHE[key]


@dataclass(frozen=True)
class ImageFacts:
    """What is known of an image: its values (H,W), whether they are HU, and its DICOM header's
    Modality and BodyPartExamined ("" or "OT" when not known: a PNG, a TIFF)."""

    pixels: np.ndarray
    hounsfield: bool = False
    modality: str = ""
    body_part: str = ""


def _normalised(term: str) -> str:
    return re.sub(r"[^A-Z]", "", str(term or "").upper())


def outside_domain(image: ImageFacts, domain: ModelDomain) -> list[str]:
    """Why ``image`` lies outside ``domain`` (one short reason each), or [] when nothing says so.

    The header decides when it speaks (Modality, then BodyPartExamined); where it is silent the
    intensity statistics do (not HU; a head; a chest)."""
    reasons = []
    modality = _normalised(image.modality)
    known_modality = modality not in ("", "OT")
    if known_modality and domain.modalities and modality not in domain.modalities:
        reasons.append(f"DICOM Modality is {image.modality} (the model knows {'/'.join(domain.modalities)})")
    body = _normalised(image.body_part)
    if body and domain.body_part_terms and not any(_normalised(t) in body for t in domain.body_part_terms):
        reasons.append(f"DICOM BodyPartExamined is {image.body_part} (the model knows the "
                       f"{' / '.join(domain.body_regions) or 'region it was trained on'})")
    if reasons:
        return reasons
    pixels = np.asarray(image.pixels, dtype=np.float32)
    if pixels.ndim != 2 or not pixels.size:
        return reasons
    if domain.units == "HU":
        if not image.hounsfield:
            why = not_hounsfield(pixels)
            if why:
                return [f"{why}: not CT in HU"]
        if not body:
            reasons += anatomy_outside_abdomen(pixels) if _abdominal(domain) else []
    return reasons


def _abdominal(domain: ModelDomain) -> bool:
    return any(_normalised(t) in ("ABD", "ABDOMEN", "LIVER") for t in domain.body_part_terms)


def not_hounsfield(pixels: np.ndarray) -> str | None:
    """Why values cannot be Hounsfield units (e.g. "values 0 to 255, none below -30"), or None when
    they could be: CT tissue lies in -1100..3100 HU, and fat or air (below -30 HU) is always there."""
    finite = pixels[np.isfinite(pixels)]
    tissue = finite[finite > PADDING_HU]
    if not tissue.size:
        return "no values above -1500"
    low, high = float(np.min(finite)), float(np.max(finite))
    inside = float(np.mean((tissue >= HU_RANGE[0]) & (tissue <= HU_RANGE[1])))
    below_water = float(np.mean(tissue < -30))
    if inside < 0.95:
        return f"values {low:g} to {high:g}, {100 * (1 - inside):.0f}% outside the HU range of tissue"
    if below_water < MIN_BELOW_WATER:
        return f"values {low:g} to {high:g}, none of fat or air (below -30 HU)"
    return None


def body_mask(pixels: np.ndarray) -> np.ndarray:
    """The largest connected region above -500 HU, holes filled: the patient's cross-section."""
    from scipy import ndimage

    body = pixels > BODY_HU
    labels, count = ndimage.label(body)
    if count == 0:
        return body
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def lung_share(pixels: np.ndarray, body: np.ndarray | None = None) -> float | None:
    """The share of the body (``body_mask``, computed unless given) that lung fills (-950..-500 HU), or None for a
    slice with almost no body (fewer than 64 pixels)."""
    body = body_mask(pixels) if body is None else body
    area = int(body.sum())
    if area < 64:
        return None
    return float(np.sum(body & (pixels > LUNG_HU[0]) & (pixels < LUNG_HU[1]))) / area


def anatomy_outside_abdomen(pixels: np.ndarray) -> list[str]:
    """Reasons (HU statistics) that a slice is not abdominal: a skull (bone ring enclosing most of the
    body) or lungs filling a large share of the body; [] when neither."""
    from scipy import ndimage

    body = body_mask(pixels)
    area = int(body.sum())
    if area < 64:
        return []
    enclosed = ndimage.binary_fill_holes((pixels > BONE_HU) & body)
    skull = float(enclosed.sum()) / area
    lungs = lung_share(pixels, body) or 0.0
    reasons = []
    if skull >= SKULL_SHARE:
        reasons.append(f"a ring of bone encloses {100 * skull:.0f}% of the body, as a skull does: it looks like a "
                       "head CT")
    if lungs >= LUNG_SHARE:
        reasons.append(f"lung fills {100 * lungs:.0f}% of the body: it looks like a chest CT")
    return reasons


def domain_warning(reasons: list[str], domain: ModelDomain) -> str:
    """The one message the user sees: what the model knows, why this image differs, that it goes on."""
    return (f"This image looks outside what the model was trained on ({domain.describe()}): {'; '.join(reasons)}. "
            "Segmenting anyway; check the result with care.")


def dicom_facts(path: str | Path) -> tuple[str, str]:
    """(Modality, BodyPartExamined) from a DICOM file's header alone ("" when absent)."""
    import pydicom

    header = pydicom.dcmread(str(path), stop_before_pixels=True)
    return str(getattr(header, "Modality", "") or ""), str(getattr(header, "BodyPartExamined", "") or "")
