"""Export mask: the selected Labels layer as a NIfTI mask in its image's geometry (nibabel) or a DICOM SEG that
references the DICOM series it lies on (highdicom); lsms_core.export writes both (docs/volumes.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image, Labels

from lsms_core.dicom import Volume

from ..layers import SourceInfo
from .following import FOLLOWED

EXPORT_FILTERS = "NIfTI mask (*.nii.gz);;DICOM SEG (*.dcm)"


def source_volume(source: Image) -> Volume:
    """The image layer as the core's Volume (Z,H,W): pixels, units, spacings, the affine and the source files
    the reader recorded (a 2-D layer is one slice)."""
    info = SourceInfo.of(source)
    pixels = np.asarray(source.data, dtype=np.float32)
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    affine = None if info.affine is None else np.asarray(info.affine, float)
    return Volume(pixels, info.hounsfield, info.modality, info.spacing_mm, info.slice_spacing_mm, info.window,
                  list(info.sop_instance_uids), [Path(f) for f in info.files], info.patient_key, affine=affine)


def mask_description(labels: Labels, proposal=None, typed: str = "") -> str:
    """What the mask is of: the followed lesion's expression, the proposal's, the Expression box's words
    (a mask drawn by hand), else the layer's name."""
    followed = labels.metadata.get(FOLLOWED)
    if followed and followed.get("text"):
        return str(followed["text"])
    if proposal is not None and proposal.request.text:
        return proposal.request.text
    return " ".join(typed.split()) or labels.name


def export_mask(mask: np.ndarray, volume: Volume, path: str, description: str, keep_identifiers: bool,
                automatic: bool) -> Path:
    """Write ``mask`` (Z,H,W or H,W) for ``volume``: ``.dcm`` -> DICOM SEG (one segment, ``description`` as its
    label; AUTOMATIC when the model's mask is unchanged, SEMIAUTOMATIC when edited or drawn), anything else
    -> NIfTI (``.nii.gz`` added when the name has no NIfTI suffix). Returns the written path."""
    from lsms_core.export.dicom_seg import write_dicom_seg
    from lsms_core.export.nifti import write_nifti_mask
    from lsms_core.pixels import ImageError

    mask = np.asarray(mask) > 0
    mask = mask[None] if mask.ndim == 2 else mask
    target = Path(path)
    if target.suffix.lower() == ".dcm":
        if not volume.files:
            raise ImageError("a DICOM SEG references the DICOM series the mask lies on: this image was not read from "
                             "DICOM files; export it as NIfTI (.nii.gz) instead")
        return write_dicom_seg([(mask, description)], volume, target, keep_identifiers,
                               algorithm_type="AUTOMATIC" if automatic else "SEMIAUTOMATIC")
    if not target.name.lower().endswith((".nii", ".nii.gz")):
        target = target.with_name(target.name + ".nii.gz")
    return write_nifti_mask(mask.astype(np.uint8), volume, target)
