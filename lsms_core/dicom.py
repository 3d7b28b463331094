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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .preprocessing import ImageError, luminance

DECODER_HINT = ("no decoder for this compression is installed: pip install pylibjpeg pylibjpeg-libjpeg "
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


MAX_PIXELS = 400_000_000  # whole file; a 512x512 CT series of 1500 slices is 393 M pixels (1.6 GB as float32)


def _read(path: Path, stop_before_pixels: bool = False):
    """The parsed file, or ImageError naming it: not DICOM, unreadable, or cut short."""
    import warnings

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise ImageError(f"{path}: not a readable DICOM file (no 'DICM' marker after the 128-byte preamble, "
                         "so it is not a DICOM Part 10 file, or it is damaged)") from exc
    except MemoryError:
        raise
    except Exception as exc:  # damaged headers: pydicom raises OSError, struct.error, IndexError, ...
        raise ImageError(f"{path}: not a readable DICOM file: the header is damaged ({_one_line(exc)})") from exc
    for warning in caught:  # pydicom keeps what it read before the end of a cut file and only warns
        if "End of file" in str(warning.message):
            raise ImageError(f"{path}: the DICOM file is truncated (it ends inside a sequence); copy it again "
                             "from its source")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    _check_not_truncated(dataset, path)
    return dataset


def _check_not_truncated(dataset, path: Path) -> None:
    """A cut file reads without error in pydicom: its last element is just shorter than its length says."""
    try:
        last = max(dataset.keys(), default=None)
        raw = dataset.get_item(last) if last is not None else None
    except Exception:  # noqa: BLE001 - a damaged last element is reported when it is used
        return
    length, value = getattr(raw, "length", None), getattr(raw, "value", None)
    if isinstance(length, int) and length != 0xFFFFFFFF and isinstance(value, bytes) and len(value) < length:
        from pydicom.datadict import keyword_for_tag

        name = keyword_for_tag(last) or "a private element"
        raise ImageError(f"{path}: the DICOM file is truncated: it ends inside {name} {last} ({len(value)} of "
                         f"{length} bytes); copy it again from its source")


def _one_line(exc: BaseException) -> str:
    """A library's message on one line (pydicom lists its decoders on several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _sop_class(dataset) -> str:
    uid = getattr(dataset, "SOPClassUID", None)
    return str(getattr(uid, "name", uid) or "unknown")


def _check_size(dataset, path: Path) -> None:
    """Refuse, before decoding, pixel data whose header promises more than fits in memory."""
    try:
        count = (int(dataset.Rows) * int(dataset.Columns) * int(getattr(dataset, "NumberOfFrames", 1) or 1)
                 * int(getattr(dataset, "SamplesPerPixel", 1) or 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageError(f"{path}: the DICOM header's image size (Rows, Columns, NumberOfFrames, SamplesPerPixel) "
                         f"is missing or not a number ({_one_line(exc)}); the header is damaged") from None
    if count <= 0:
        raise ImageError(f"{path}: the DICOM header says the image has {count} pixels (Rows x Columns x frames); "
                         "the header is damaged")
    if count > MAX_PIXELS:
        raise ImageError(f"{path}: the DICOM header says {count:,} pixel values ({dataset.Rows}x{dataset.Columns}, "
                         f"{getattr(dataset, 'NumberOfFrames', 1)} frames), more than the {MAX_PIXELS:,} this reader "
                         "holds in memory; split the file or downsample it")


def _decode(dataset, path: Path) -> np.ndarray:
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        sop_class = _sop_class(dataset)
        if not len(dataset):
            raise ImageError(f"{path}: the DICOM file ends right after its file header (no data elements): it is "
                             "truncated; copy it again from its source")
        if "Rows" in dataset or "Image" in sop_class:
            raise ImageError(f"{path}: this DICOM image ({sop_class}) has no pixel data: the file is probably "
                             "truncated or damaged; copy it again from its source")
        raise ImageError(f"{path}: this DICOM object has no pixel data (SOP class {sop_class}), so there is "
                         "nothing to segment; open an image (CT, MR, CR, DX...) instead")
    _check_size(dataset, path)
    try:
        return dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for missing decoders or damaged data
        raise ImageError(f"{path}: cannot decode the pixel data (transfer syntax {_syntax_name(dataset)}): "
                         f"{_one_line(exc)}{_decoder_advice(dataset)}") from exc


def _syntax_name(dataset) -> str:
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    return str(getattr(syntax, "name", syntax))


def _decoder_advice(dataset) -> str:
    """What to install when no decoder for the file's compression is present, else a hint at damage."""
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(dataset.file_meta.TransferSyntaxUID)
        available = decoder.is_available
    except Exception:  # noqa: BLE001 - unknown or missing transfer syntax: nothing to install
        return "; the file is damaged or not a standard DICOM image"
    if available:
        return ("; the pixel data is damaged, or uses a variant the installed decoders do not read "
                "(pip install python-gdcm reads more)")
    return f"; {DECODER_HINT}"


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
    return window if np.isfinite(window).all() and window[1] > 0 else None


def dicom_spacing(dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = getattr(dataset, keyword, None)
            if value is None or isinstance(value, (str, bytes)) or len(value) != 2:
                continue
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
        if 0 < row < np.inf and 0 < col < np.inf:
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
    with _damaged_header(path):
        raw = _decode(dataset, path)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        samples = int(getattr(dataset, "SamplesPerPixel", 1))
        if frames == 1:
            raw = raw[None]
        if raw.ndim != (4 if samples == 3 else 3):
            raise ImageError(f"{path}: unexpected pixel array shape {raw.shape} for {frames} frame(s) of "
                             f"{samples} sample(s) per pixel; the header is inconsistent")
        values, window = to_physical(dataset, raw)
        if not np.isfinite(values).all():
            raise ImageError(f"{path}: the pixel data holds NaN or infinite values")
        modality = str(getattr(dataset, "Modality", "OT"))
        return Volume(values.astype(np.float32, copy=False), modality == "CT" and samples == 1, modality,
                      dicom_spacing(dataset), _slice_spacing(dataset), window,
                      [str(getattr(dataset, "SOPInstanceUID", "")) or None] * len(values), [path],
                      _patient_key(dataset))


def _slice_spacing(dataset) -> float | None:
    try:
        spacing = float(getattr(dataset, "SpacingBetweenSlices", None) or 0)
    except (TypeError, ValueError):
        return None
    return spacing if 0 < spacing < np.inf else None


@contextlib.contextmanager
def _damaged_header(path: Path) -> Iterator[None]:
    """Header values that do not convert (a damaged or hand-made file) -> ImageError naming the file."""
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except Exception as exc:  # pydicom converts values lazily: ValueError, TypeError, IndexError, ...
        raise ImageError(f"{path}: the DICOM header is damaged or inconsistent ({type(exc).__name__}: "
                         f"{_one_line(exc)})") from exc


def _slice_position(dataset) -> float | None:
    """Position along the slice normal, or None when the header does not say (or says nonsense)."""
    try:
        position = np.array(getattr(dataset, "ImagePositionPatient", None), float)
        orientation = np.array(getattr(dataset, "ImageOrientationPatient", None), float)
    except (TypeError, ValueError):
        return None
    if position.shape != (3,) or orientation.shape != (6,):
        return None
    value = float(np.dot(position, np.cross(orientation[:3], orientation[3:])))
    return value if np.isfinite(value) else None


def _instance_number(dataset) -> int:
    try:
        return int(getattr(dataset, "InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


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
    with _damaged_header(folder):
        return _stack_series(folder, headers, skipped)


def _stack_series(folder: Path, headers: list, skipped: list[str]) -> Volume:
    """The largest series among ``headers`` [(path, header)], decoded and sorted."""
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
        order = sorted(range(len(chosen)), key=lambda i: _instance_number(chosen[i][1]))
    shapes = {(int(h.Rows), int(h.Columns)) for _, h in chosen}
    if len(shapes) > 1:
        raise ImageError(f"{folder}: the slices have different sizes {sorted(shapes)}; open them one by one")
    rows, columns = shapes.pop()
    if len(chosen) * rows * columns > MAX_PIXELS:
        raise ImageError(f"{folder}: {len(chosen)} slices of {rows}x{columns} are more than the {MAX_PIXELS:,} "
                         "pixels this reader holds in memory; open a part of the series")
    slices, uids, files, window = [], [], [], None
    for i in order:
        path = chosen[i][0]
        dataset = _read(path)
        values, slice_window = to_physical(dataset, _decode(dataset, path))
        if values.shape != (rows, columns):
            raise ImageError(f"{path}: expected one {rows}x{columns} slice per file in a series folder, got "
                             f"shape {values.shape}")
        if not np.isfinite(values).all():
            raise ImageError(f"{path}: the pixel data holds NaN or infinite values")
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
    """A DICOM file or a folder holding a series.

    Every problem with the input (missing, empty, unreadable, truncated, not DICOM, no pixel
    data, a damaged header, an undecodable compression) raises ImageError naming the file.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return read_dicom_series(path)
        if not path.is_file():
            raise ImageError(f"{path}: no such file or folder")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty (0 bytes)")
        return read_dicom_file(path)
    except OSError as exc:  # a folder or file this user may not read
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
