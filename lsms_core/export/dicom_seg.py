"""Lesion masks as a DICOM Segmentation (SEG) that references the CT series they were drawn on (highdicom).

PACS viewers, 3D Slicer, OHIF and MONAI Label open it over its source series: one BINARY segment per lesion,
labelled with the referring expression that found it, a frame for each source slice the lesion touches.

Identifiers (the project's rule, ``lsms_core.privacy``: identifiers leave a DICOM header only when the user
asks). By default the SEG is built from copies of the source headers holding only what a SEG needs to
reference and place its frames (``_NEEDED``: UIDs, geometry, image size, the scanner's make and model); the
patient and study attributes are then blanked, PatientID being the pseudonymous key (``Volume.patient_key``).
Before anything is written, the encoded SEG's ``privacy.IDENTIFIER_FIELDS`` and person names are compared with
the source's; one found refuses the write. The UIDs stay: the Study, Series and SOP Instance UIDs of the source
are how a SEG says which images it segments (PS3.3 C.8.20), so without them it would be a mask of nothing.
``keep_identifiers=True`` copies the source's patient and study modules unchanged, as highdicom does by default:
use it for a SEG stored beside its source in a PACS, which may refuse a study whose objects disagree on the patient.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_write_bytes
from ..dicom import Volume
from ..pixels import ImageError, one_line
from ..privacy import IDENTIFIER_FIELDS

SERIES_DESCRIPTION = "LSMS lesions"
MANUFACTURER = "lsms-napari"
ALGORITHM_NAME = "LSMS"
LABEL_CHARS = 64  # SegmentLabel is LO: at most 64 characters, no backslash or control characters
DESCRIPTION_CHARS = 1024  # SegmentDescription is ST: at most 1024 characters
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC")
# The source attributes a de-identified SEG is built from: references (UIDs), geometry, image size and the
# acquisition equipment's make and model. Nothing identifies a person; IDENTIFIER_FIELDS' UIDs are here
# because a SEG must reference its source (module docstring).
_NEEDED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
           "PositionReferenceIndicator", "Modality", "ImageType", "Rows", "Columns", "SamplesPerPixel",
           "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
           "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness",
           "SpacingBetweenSlices", "SpecificCharacterSet", "BodyPartExamined", "Laterality", "Manufacturer",
           "ManufacturerModelName", "SoftwareVersions")
# Type 2 attributes highdicom reads from the first source: present, empty (PatientID: the pseudonymous key).
_BLANKED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
            "StudyTime", "ReferringPhysicianName")


def write_dicom_seg(segments: list[tuple[np.ndarray, str]], volume: Volume, path: str | os.PathLike,
                    keep_identifiers: bool = False, *, algorithm_type: str = "AUTOMATIC",
                    series_number: int = 900) -> Path:
    """Write the lesions in ``segments`` as one DICOM SEG file at ``path`` and return the path.

    segments: [(mask, description)], mask (Z,H,W) bool (or 0/1) in ``volume.pixels``' voxel order, description
    the referring expression that found it (e.g. "the largest lesion"): segment k+1 is the k-th item, its
    SegmentLabel the description cut to 64 characters, SegmentDescription the full text (up to 1024).
    volume: read from DICOM files, one per slice (``read_dicom`` of a series folder, or of one single-slice
    file): ``volume.files`` and ``volume.sop_instance_uids`` in Z order; the headers are read again from there.
    keep_identifiers: copy the source's patient and study identifiers (module docstring); False by default.
    algorithm_type: "AUTOMATIC" (the model's mask) or "SEMIAUTOMATIC" (edited by hand).

    BINARY segmentation, property category "Morphologically Abnormal Structure", type "Neoplasm", algorithm
    "LSMS" of family "Artificial Intelligence"; frames only where a mask has pixels. Written atomically.
    ImageError: an empty segment list, a mask not of the volume's shape or empty, a volume not read from
    DICOM slices, a source file that changed since it was read, or sources highdicom refuses.
    """
    path = Path(path)
    masks, descriptions = _checked_segments(segments, volume, path)
    if algorithm_type not in ALGORITHM_TYPES:
        raise ImageError(f"algorithm type {algorithm_type!r}: use one of {', '.join(ALGORITHM_TYPES)}")
    headers = _source_headers(volume, path)
    sources = headers if keep_identifiers else [_deidentified(header, volume.patient_key) for header in headers]
    dataset = _segmentation(sources, masks, descriptions, algorithm_type, series_number, path)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    if not keep_identifiers:
        _check_no_identifiers(data, headers[0], path)
    atomic_write_bytes(path, data)
    return path


def _checked_segments(segments, volume: Volume, path: Path) -> tuple[np.ndarray, list[str]]:
    """(masks (Z,H,W,S) bool, descriptions) or ImageError saying which segment is wrong."""
    if not segments:
        raise ImageError(f"{path}: no segments to write; give at least one (mask, description)")
    masks, descriptions = [], []
    for number, item in enumerate(segments, 1):
        try:
            mask, description = item
        except (TypeError, ValueError):
            raise ImageError(f"{path}: segment {number} is not a (mask, description) pair") from None
        mask = np.asarray(mask)
        if mask.shape != volume.pixels.shape:
            raise ImageError(f"{path}: segment {number} ({description!r}) is {mask.shape} but the volume is "
                             f"{volume.pixels.shape} (Z,H,W); give one mask value per image voxel")
        if mask.dtype != bool and not (np.issubdtype(mask.dtype, np.integer) and np.isin(mask, (0, 1)).all()):
            raise ImageError(f"{path}: segment {number} ({description!r}) is not a binary mask ({mask.dtype}); "
                             "give a bool mask, one per lesion")
        if not mask.any():
            raise ImageError(f"{path}: segment {number} ({description!r}) is empty; leave it out")
        masks.append(mask.astype(bool))
        descriptions.append(str(description))
    return np.stack(masks, axis=-1), descriptions


def _source_headers(volume: Volume, path: Path) -> list:
    """The headers of ``volume.files`` (pixel data not read), checked to be the slices that were read."""
    import pydicom

    count = len(volume.pixels)
    uids = list(volume.sop_instance_uids)
    if len(volume.files) != count or len(uids) != count or any(uid is None for uid in uids):
        raise ImageError(f"{path}: a DICOM SEG references the DICOM slices of its image, and this volume was not "
                         f"read from DICOM files one per slice ({len(volume.files)} file(s), {count} slice(s)); open "
                         "the DICOM series folder (or export a NIfTI mask instead)")
    headers = []
    for file, uid in zip(volume.files, uids, strict=True):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - gone, unreadable, no longer DICOM
            raise ImageError(f"{file}: cannot read the source slice again for the SEG ({one_line(exc)}); open "
                             "the series again") from exc
        if str(getattr(header, "SOPInstanceUID", "")) != uid:
            raise ImageError(f"{file}: this file changed since the series was opened (another SOP Instance UID); "
                             "open the series again")
        headers.append(header)
    return headers


def _deidentified(header, patient_key: str | None):
    """A copy of ``header`` with only ``_NEEDED`` (and the file meta), the Type 2 patient and study attributes
    highdicom reads set empty, PatientID the pseudonymous key."""
    from pydicom.dataset import Dataset

    copy = Dataset()
    copy.file_meta = header.file_meta
    for keyword in _NEEDED:
        if keyword in header:
            copy[keyword] = header[keyword]
    for keyword in _BLANKED:
        setattr(copy, keyword, "")
    copy.PatientID = patient_key or ""
    return copy


def _segment_description(number: int, text: str, algorithm_type: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label = " ".join(text.replace("\\", "/").split())  # LO: no backslash (value separator), no control characters
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label[:LABEL_CHARS].rstrip() or f"lesion {number}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=algorithm_type,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, family=codes.DCM.ArtificialIntelligence, version=__version__))
    description.SegmentDescription = text[:DESCRIPTION_CHARS]  # ST: backslashes allowed
    return description


def _segmentation(sources: list, masks: np.ndarray, descriptions: list[str], algorithm_type: str,
                  series_number: int, path: Path):
    import highdicom as hd

    try:
        return hd.seg.Segmentation(
            source_images=sources,
            pixel_array=masks,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(number, text, algorithm_type)
                                  for number, text in enumerate(descriptions, 1)],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME,
            software_versions=__version__,
            device_serial_number="1",
            series_description=SERIES_DESCRIPTION,
            content_label="LSMS",
            content_description="Lesions found by referring expressions",
            omit_empty_frames=True,
        )
    except (ValueError, AttributeError, TypeError, KeyError) as exc:  # highdicom's checks of the sources
        raise ImageError(f"{path}: highdicom cannot build a SEG on these source images ({one_line(exc)}); they "
                         "need a Frame of Reference UID, image position, orientation and pixel spacing") from exc


def _check_no_identifiers(data: bytes, source, path: Path) -> None:
    """Refuse to write when an identifying attribute of the encoded SEG, at any depth, holds the source's value:
    one of ``IDENTIFIER_FIELDS`` (its UIDs aside) or OtherPatientIDs equal to the source's same attribute, or a
    person name equal to any of the source's. A guard against a highdicom release that copies more than
    ``_NEEDED``; values are compared whole, so a short ID cannot match a code or a UID by chance."""
    import pydicom

    keywords = {k for k in IDENTIFIER_FIELDS if not k.endswith("UID")} | {"OtherPatientIDs"}
    by_keyword = {k: _texts(source[k]) for k in keywords if k in source}
    names = set().union(*(_texts(e) for e in source.iterall() if e.VR == "PN"))
    for element in pydicom.dcmread(io.BytesIO(data)).iterall():
        found = _texts(element) & (by_keyword.get(element.keyword, set()) | (names if element.VR == "PN" else set()))
        if found:
            raise ImageError(f"{path}: not written: the SEG's {element.keyword} would hold the source's identifier; a "
                             "bug in lsms-napari's de-identification, please report it")


def _texts(element) -> set[str]:
    """The non-empty values of a text element, stripped (nothing for sequences and binary values)."""
    if element.VR in ("SQ", "OB", "OW", "UN") or element.value in (None, ""):
        return set()
    values = element.value if element.VM > 1 else [element.value]
    return {str(value).strip() for value in values if str(value).strip()}
