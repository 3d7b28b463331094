"""The models shipped in the package, by name, and which one an image gets (no torch, no Qt).

``liver`` (also ``default``): LSMS trained on RefLiTS (abdominal CT in HU, one LiTS liver);
``qata``: chest radiographs (QaTa-COV19, COVID-19 infection); ``lung-ct``: axial chest CT (COVID-19
lung infection, MedSeg's slices). ``choose_model`` picks one from what is known of an image: the DICOM
header first (a radiograph's Modality CR / DX; BodyPartExamined), then the pixels (lungs filling the
body of a CT slice in HU), then what the user said the image is (a PNG marked as an X-ray). Each choice
comes with its reason, which the widget and ``lsms-segment`` show; the user can always name a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHTS = Path(__file__).parent / "weights"
AUTO = "auto"
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")  # DICOM Modality of projection radiographs
CHEST_TERMS = ("CHEST", "THORAX", "LUNG", "PULMO")  # BodyPartExamined words of the chest
IMAGE_KINDS = ("auto", "xray", "ct")  # what the user may say a header-less image (PNG, JPEG, .npy) is


@dataclass(frozen=True)
class ShippedModel:
    name: str
    file: str
    title: str  # what the model picker shows


SHIPPED = {
    "liver": ShippedModel("liver", "lsms-reflits.safetensors", "liver CT (lsms-reflits)"),
    "qata": ShippedModel("qata", "lsms-qata.safetensors", "chest X-ray (lsms-qata)"),
    "lung-ct": ShippedModel("lung-ct", "lsms-lung-ct.safetensors", "lung CT (lsms-lung-ct)"),
}
ALIASES = {"default": "liver"}


def shipped_name(checkpoint: str) -> str | None:
    """The shipped model's name for ``checkpoint`` ("default" -> "liver"), or None for a file path."""
    name = ALIASES.get(str(checkpoint), str(checkpoint))
    return name if name in SHIPPED else None


def shipped_path(name: str) -> Path:
    """The weights file of shipped model ``name`` (or alias); it may be missing from an installation."""
    return WEIGHTS / SHIPPED[shipped_name(name) or name].file


def installed(name: str) -> bool:
    return shipped_path(name).is_file()


@dataclass(frozen=True)
class ModelChoice:
    """The model chosen for an image (a shipped model's name) and why, in words for the user."""

    name: str
    reason: str

    def describe(self) -> str:
        return f"{SHIPPED[self.name].title}: {self.reason}"


def choose_model(pixels: np.ndarray | None, hounsfield: bool, modality: str = "", body_part: str = "",
                 kind: str = "auto") -> ModelChoice:
    """The shipped model for an image. ``modality``/``body_part``: its DICOM header's Modality and
    BodyPartExamined ("" or "OT" when unknown); ``kind``: what the user says a header-less image is
    ("xray", "ct", or "auto"). A model that is not installed is never chosen: the liver model answers then,
    and the reason says so."""
    if kind not in IMAGE_KINDS:
        raise ValueError(f"image kind must be one of {', '.join(IMAGE_KINDS)}, got {kind!r}")
    modality = str(modality or "").upper()
    body = "".join(c for c in str(body_part or "").upper() if c.isalpha())
    choice = _by_image(pixels, hounsfield, modality, body, kind)
    if choice.name != "liver" and not installed(choice.name):
        return ModelChoice("liver", f"{choice.reason}, but the {SHIPPED[choice.name].title} model is not installed")
    return choice


def _by_image(pixels, hounsfield: bool, modality: str, body: str, kind: str) -> ModelChoice:
    if modality in RADIOGRAPH_MODALITIES:
        return ModelChoice("qata", f"a radiograph (DICOM Modality {modality})")
    if kind == "xray" and modality in ("", "OT"):
        return ModelChoice("qata", "marked as an X-ray")
    is_ct = modality == "CT" or hounsfield or kind == "ct"
    if not is_ct:
        what = f"DICOM Modality {modality}" if modality not in ("", "OT") else "an image without a header"
        return ModelChoice("liver", f"{what}, not marked as an X-ray: the default model")
    if body and any(term in body for term in CHEST_TERMS):
        return ModelChoice("lung-ct", f"a chest CT (BodyPartExamined {body})")
    if body:
        return ModelChoice("liver", f"a CT of the {body.lower()} (BodyPartExamined)")
    if hounsfield and pixels is not None:
        from .domain import LUNG_SHARE, lung_share

        share = lung_share(np.asarray(pixels, dtype=np.float32))
        if share is not None:
            if share >= LUNG_SHARE:
                return ModelChoice("lung-ct", f"a chest CT (lung fills {100 * share:.0f}% of the body)")
            return ModelChoice("liver", f"a CT slice without much lung ({100 * share:.0f}% of the body): the liver "
                                        "model")
    return ModelChoice("liver", "a CT slice: the liver model")


def resolve_auto(checkpoint: str, pixels, hounsfield: bool, modality: str = "", body_part: str = "",
                 kind: str = "auto") -> tuple[str, ModelChoice | None]:
    """``checkpoint`` itself, or for ``"auto"`` the chosen shipped model's checkpoint name and the choice (the liver
    model is named ``"default"``, as it always was: provenance, Refine and fine-tuning see no change)."""
    if str(checkpoint) != AUTO:
        return str(checkpoint), None
    choice = choose_model(pixels, hounsfield, modality, body_part, kind)
    return checkpoint_name(choice.name), choice


def checkpoint_name(name: str) -> str:
    """The checkpoint string of shipped model ``name``: ``"default"`` for the liver model, else the name."""
    return "default" if name == "liver" else name
