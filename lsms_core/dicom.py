"""DICOM to physical units, the radiology way.

- Modality LUT (rescale slope/intercept, or a Modality LUT sequence): CT comes out in HU.
- VOI: the file's window (centre/width) becomes the initial display contrast; a VOI LUT sequence on
  a non-CT image (e.g. a radiograph) is applied to the values, as viewers do.
- MONOCHROME1 (white = low): inverted *after* the VOI step, i.e. the values are mirrored and so is
  the window, so what is displayed equals pydicom's VOI output turned upside down.
- Pixel spacing (PixelSpacing, else ImagerPixelSpacing) in mm, for the layer scale and measurements.
- Multi-frame files and folders holding a series (slices sorted along the slice normal).
- Patient identifiers never leave this module: only a pseudonymous key (lsms_core.privacy) does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .preprocessing import ImageError, luminance

DECODER_HINT = ("for compressed DICOM install a decoder: pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg (JPEG, JPEG-LS, JPEG 2000)")


@dataclass
class Volume:
    """A stack of slices (Z,H,W) in physical units, and what is known of it.

    spacing_mm: (row, column) pixel spacing; slice_spacing_mm: distance between slices; both None
    when unknown. window: (centre, width) in the units of ``pixels``. patient_key: pseudonymous.
    """

    pixels: np.ndarray
    hounsfield: bool
    modality: str
    spacing_mm: tuple[float, float] | None = None
    slice_spacing_mm: float | None = None
    window: tuple[float, float] | None = None
    sop_instance_uids: list[str | None] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    patient_key: str | None = None
    notes: list[str] = field(default_factory=list)

    def slice(self, index: int):
        """Slice ``index`` as an image_io.Slice."""
        from .image_io import Slice

        if not 0 <= index < len(self.pixels):
            raise ImageError(f"slice {index} out of range 0..{len(self.pixels) - 1}")
        uid = self.sop_instance_uids[index] if index < len(self.sop_instance_uids) else None
        path = self.files[index] if len(self.files) == len(self.pixels) else (self.files[0] if self.files else None)
        return Slice(self.pixels[index], self.hounsfield, self.modality, self.spacing_mm, self.window, uid, path,
                     self.patient_key)


def _read(path: Path, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"{path}: not a readable DICOM file ({exc})") from exc


def _decode(dataset, path: Path) -> np.ndarray:
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise ImageError(f"{path}: this DICOM object has no pixel data (SOP class "
                         f"{getattr(dataset, 'SOPClassUID', 'unknown')!s}), so there is nothing to segment")
    try:
        return dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for missing decoders or damaged data
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ImageError(f"{path}: cannot decode the pixel data (transfer syntax {name}): {exc}; "
                         f"{DECODER_HINT}") from exc


def _first_value(value) -> float:
    """A DICOM DS that may be multi-valued (several windows): the first one."""
    if isinstance(value, (str, bytes, int, float)):
        return float(value)
    return float(value[0])


def dicom_window(dataset) -> tuple[float, float] | None:
    center, width = getattr(dataset, "WindowCenter", None), getattr(dataset, "WindowWidth", None)
    if center is None or width is None:
        return None
    try:
        window = _first_value(center), _first_value(width)
    except (TypeError, ValueError, IndexError):
        return None
    return window if window[1] > 0 else None


def dicom_spacing(dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(dataset, keyword, None)
        if value is not None and len(value) == 2:
            row, col = float(value[0]), float(value[1])
            if row > 0 and col > 0:
                return row, col
    return None


def to_physical(dataset, raw: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Stored values -> (values (...,H,W) float32, display window): modality LUT, VOI LUT
    sequence for non-CT, MONOCHROME1 inverted after the VOI step (window mirrored too)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    if int(getattr(dataset, "SamplesPerPixel", 1)) == 3:
        return luminance(raw), None
    values = np.asarray(apply_modality_lut(raw, dataset), dtype=np.float32)
    window = dicom_window(dataset)
    if getattr(dataset, "Modality", "") != "CT" and "VOILUTSequence" in dataset:
        values = np.asarray(apply_voi(values, dataset), dtype=np.float32)
        window = None
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        low, high = float(values.min()), float(values.max())
        values = (low + high) - values
        if window is not None:
            window = (low + high - window[0], window[1])
    return values, window


def _patient_key(dataset) -> str | None:
    from .privacy import pseudonymous_key

    for keyword, prefix in (("PatientID", "p"), ("StudyInstanceUID", "s")):
        value = str(getattr(dataset, keyword, "") or "").strip()
        if value:
            return pseudonymous_key(value, prefix)
    return None


def read_dicom_file(path: str | Path) -> Volume:
    """One file: a single slice (Z = 1) or all frames of a multi-frame image."""
    path = Path(path)
    dataset = _read(path)
    raw = _decode(dataset, path)
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    samples = int(getattr(dataset, "SamplesPerPixel", 1))
    if frames == 1:
        raw = raw[None]
    if raw.ndim != (4 if samples == 3 else 3):
        raise ImageError(f"{path}: unexpected pixel array shape {raw.shape}")
    values, window = to_physical(dataset, raw)
    if not np.isfinite(values).all():
        raise ImageError(f"{path}: the pixel data holds NaN or infinite values")
    modality = str(getattr(dataset, "Modality", "OT"))
    spacing_between = getattr(dataset, "SpacingBetweenSlices", None)
    return Volume(values.astype(np.float32, copy=False), modality == "CT" and samples == 1, modality,
                  dicom_spacing(dataset), float(spacing_between) if spacing_between else None, window,
                  [str(getattr(dataset, "SOPInstanceUID", "")) or None] * len(values), [path],
                  _patient_key(dataset))


def _slice_position(dataset) -> float | None:
    position = getattr(dataset, "ImagePositionPatient", None)
    orientation = getattr(dataset, "ImageOrientationPatient", None)
    if position is None or orientation is None or len(orientation) != 6:
        return None
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    return float(np.dot(np.array(position, float), np.cross(row, col)))


def read_dicom_series(folder: str | Path) -> Volume:
    """A folder of single-slice files of one series, sorted along the slice normal
    (ImagePositionPatient on the normal of ImageOrientationPatient; else InstanceNumber)."""
    folder = Path(folder)
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers, skipped = [], []
    for path in candidates:
        try:
            header = _read(path, stop_before_pixels=True)
        except ImageError:
            skipped.append(path.name)
            continue
        if "Rows" in header:
            headers.append((path, header))
        else:
            skipped.append(path.name)
    if not headers:
        raise ImageError(f"{folder}: no DICOM images in this folder"
                         + (f" ({len(skipped)} other files)" if skipped else ""))
    series: dict[str, list] = {}
    for path, header in headers:
        series.setdefault(str(getattr(header, "SeriesInstanceUID", "")), []).append((path, header))
    chosen = max(series.values(), key=len)
    notes = [f"skipped {len(skipped)} files that are not DICOM images"] if skipped else []
    if len(series) > 1:
        notes.append(f"the folder holds {len(series)} series; opened the largest ({len(chosen)} slices)")
    positions = [_slice_position(h) for _, h in chosen]
    if all(p is not None for p in positions):
        order = sorted(range(len(chosen)), key=lambda i: positions[i])
    else:
        order = sorted(range(len(chosen)), key=lambda i: int(getattr(chosen[i][1], "InstanceNumber", 0) or 0))
    shapes = {(int(h.Rows), int(h.Columns)) for _, h in chosen}
    if len(shapes) > 1:
        raise ImageError(f"{folder}: the slices have different sizes {sorted(shapes)}; open them one by one")
    slices, uids, files, window = [], [], [], None
    for i in order:
        path = chosen[i][0]
        dataset = _read(path)
        values, slice_window = to_physical(dataset, _decode(dataset, path))
        if values.ndim != 2:
            raise ImageError(f"{path}: expected one slice per file in a series folder, got shape {values.shape}")
        slices.append(values)
        uids.append(str(getattr(dataset, "SOPInstanceUID", "")) or None)
        files.append(path)
        window = window or slice_window
    first = chosen[order[0]][1]
    sorted_positions = [positions[i] for i in order]
    gaps = np.diff(sorted_positions) if all(p is not None for p in sorted_positions) and len(order) > 1 else []
    slice_spacing = float(np.median(gaps)) if len(gaps) and np.median(gaps) > 0 else None
    modality = str(getattr(first, "Modality", "OT"))
    return Volume(np.stack(slices).astype(np.float32), modality == "CT" and int(getattr(first, "SamplesPerPixel", 1)) == 1,
                  modality, dicom_spacing(first), slice_spacing, window, uids, files, _patient_key(first), notes)


def read_dicom(path: str | Path) -> Volume:
    """A DICOM file or a folder holding a series."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file or folder")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    return read_dicom_file(path)
