"""DICOM to physical units, the radiology way.

- Modality LUT (rescale slope/intercept, or a Modality LUT sequence): CT comes out in HU.
- Enhanced (multi-frame) images keep rescale, window and pixel spacing in functional groups: a
  frame's own group (PerFrameFunctionalGroupsSequence) is used first, then the shared group
  (SharedFunctionalGroupsSequence), then the top level.
- VOI: the file's window (centre/width) becomes the initial display contrast; a VOI LUT sequence on
  a non-CT image (e.g. a radiograph) is applied to the values, as viewers do.
- MONOCHROME1 (white = low): inverted *after* the VOI step, i.e. the values are mirrored and so is
  the window, so what is displayed equals pydicom's VOI output turned upside down.
- Pixel spacing (PixelSpacing, else ImagerPixelSpacing) in mm, for the layer scale and measurements.
- Multi-frame files and folders holding a series (slices sorted along the slice normal).
- Sizes are checked from the header before anything is decoded (lsms_core.limits); a deflated file
  is inflated a step at a time, never past what its header's image needs; one frame can be decoded alone.
- Patient identifiers never leave this module: only a pseudonymous key (lsms_core.privacy) does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .limits import MAX_SIDE, MAX_SLICE_PIXELS, MAX_VOLUME_BYTES
from .limits import MAX_VOLUME_PIXELS as MAX_PIXELS
from .pixels import ImageError, Slice, check_pixel_count, luminance, one_line, to_float32

DECODER_HINT = ("no decoder for this compression is installed: pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg (JPEG, JPEG-LS, JPEG 2000)")


@dataclass
class Volume:
    """A stack of slices (Z,H,W) in physical units, and what is known of it.

    spacing_mm: (row, column) pixel spacing; slice_spacing_mm: distance between slices; both None
    when unknown. window: (centre, width) in the units of ``pixels``. patient_key: pseudonymous.
    affine: 4x4 float64 mapping a voxel index (z, row, column, 1) of ``pixels`` to patient coordinates in mm
    in DICOM's LPS system (x towards the patient's left, y posterior, z superior); None when the file does
    not place the image in the patient (no ImagePositionPatient, ImageOrientationPatient or pixel spacing).
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
    body_part: str = ""  # BodyPartExamined ("" when the header does not say): the model's domain check reads it
    drawn: list = field(default_factory=list)  # [(slice index, overlays.DrawnOverlay)]: outlines drawn in the file
    affine: np.ndarray | None = None

    def slice(self, index: int) -> Slice:
        """Slice ``index`` as a Slice (lsms_core.pixels)."""
        if not 0 <= index < len(self.pixels):
            raise ImageError(f"slice {index} out of range 0..{len(self.pixels) - 1}")
        uid = self.sop_instance_uids[index] if index < len(self.sop_instance_uids) else None
        path = self.files[index] if len(self.files) == len(self.pixels) else (self.files[0] if self.files else None)
        return Slice(self.pixels[index], self.hounsfield, self.modality, self.spacing_mm, self.window, uid, path,
                     self.patient_key, self.body_part)


DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset is zlib-deflated
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
_PIXEL_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")
MAX_HEADER_BYTES = 64 << 20  # inflated header before the pixel data; real headers are a few KB
_INFLATE_STEP = 1 << 20


def _read(path: Path, stop_before_pixels: bool = False):
    """The parsed file, or ImageError naming it: not DICOM, unreadable, or cut short.

    A deflated file is inflated step by step: its header first, whose image size is checked
    (``_check_size``), then never more than that image needs, so a decompression bomb is refused
    without being held in memory (pydicom itself inflates the whole stream at once)."""
    import warnings

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if _is_deflated(path):
                dataset = _read_deflated(path, stop_before_pixels)
            else:
                dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise ImageError(f"{path}: not a readable DICOM file (no 'DICM' marker after the 128-byte preamble, "
                         "so it is not a DICOM Part 10 file, or it is damaged)") from exc
    except (ImageError, MemoryError):
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


def _is_deflated(path: Path) -> bool:
    """True for a DICOM Part 10 file whose transfer syntax is Deflated Explicit VR Little Endian."""
    from pydicom.filereader import read_file_meta_info

    return str(read_file_meta_info(path).get("TransferSyntaxUID", "")) == DEFLATED


class _Inflater:
    """The deflated rest of an open file, inflated a step at a time."""

    def __init__(self, handle) -> None:
        import zlib

        self.handle = handle
        self.stream = zlib.decompressobj(-zlib.MAX_WBITS)
        self.done = False

    def step(self, size: int = _INFLATE_STEP) -> bytes:
        """Up to ``size`` more inflated bytes (b"" at the end of the stream)."""
        import zlib

        out = b""
        while not out and not self.done:
            data = self.stream.unconsumed_tail or self.handle.read(1 << 16)
            if not data:
                self.done = True
                return out + self.stream.flush()
            try:
                out = self.stream.decompress(data, size)
            except zlib.error as exc:
                raise ImageError(f"{self.handle.name}: the deflated DICOM data is damaged ({exc})") from None
            self.done = self.stream.eof
        return out


def _read_deflated(path: Path, stop_before_pixels: bool):
    """pydicom's reading of a deflated file (filereader.read_partial), inflating only what is needed."""
    import warnings

    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    def parse(data: bytes, stop: bool):
        found = []

        def at_pixels(tag, vr, length) -> bool:
            if tag in _PIXEL_TAGS:
                found.append(tag)
                return True
            return False

        buffer = DicomBytesIO(data)
        buffer.name = str(path)
        dataset = read_dataset(buffer, False, True, stop_when=at_pixels if stop else None)
        return dataset, bool(found), buffer.tell()

    with open(path, "rb") as handle:
        preamble = read_preamble(handle, False)
        file_meta = _read_file_meta_info(handle)
        inflater = _Inflater(handle)
        chunks: list[bytes] = []
        size = 0
        header = None
        while header is None:  # the header: inflate until the pixel data element is reached
            chunk = inflater.step()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            seam = chunks[-2][-3:] + chunk if len(chunks) > 1 else chunk  # a tag may straddle two steps
            if any(tag in seam for tag in _PIXEL_TAG_BYTES):
                with warnings.catch_warnings():  # a pixel tag inside a sequence (an icon): the parse runs off the end
                    warnings.simplefilter("ignore")
                    candidate, found, _ = parse(b"".join(chunks), stop=True)
                if found:
                    header = candidate
            if size > MAX_HEADER_BYTES:
                raise ImageError(f"{path}: the deflated DICOM file inflates to more than {MAX_HEADER_BYTES:,} bytes "
                                 "before its pixel data: a decompression bomb or a damaged file")
        if header is not None:
            with _damaged_header(path):
                _check_size(header, path)
            if stop_before_pixels:
                return FileDataset(str(path), header, preamble, file_meta, False, True)
            limit = size + _pixel_bytes(header) + (16 << 20)  # what the image needs, and room for what follows
            while chunk := inflater.step():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise ImageError(f"{path}: the deflated DICOM data inflates to more than {limit:,} bytes, more "
                                     "than its header's image needs: a decompression bomb or a damaged file")
    data = b"".join(chunks)
    del chunks
    dataset = parse(data, stop=stop_before_pixels)[0]
    return FileDataset(str(path), dataset, preamble, file_meta, False, True)


def _pixel_bytes(dataset) -> int:
    """Bytes of native pixel data the header promises (Rows x Columns x frames x samples x bits)."""
    bits = int(getattr(dataset, "BitsAllocated", 16) or 16)
    return -(-_value_count(dataset) * bits // 8)


def _value_count(dataset) -> int:
    return (int(dataset.Rows) * int(dataset.Columns) * _frame_count(dataset)
            * int(getattr(dataset, "SamplesPerPixel", 1) or 1))


def _frame_count(dataset) -> int:
    return int(getattr(dataset, "NumberOfFrames", 1) or 1)


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


_one_line = one_line  # a library's message on one line (pydicom lists its decoders on several)


def _sop_class(dataset) -> str:
    uid = getattr(dataset, "SOPClassUID", None)
    return str(getattr(uid, "name", uid) or "unknown")


def _check_size(dataset, path: Path) -> None:
    """Refuse, from the header and before anything is decoded (or inflated), pixel data whose header
    promises more than fits in memory: a slice over MAX_SLICE_PIXELS or MAX_SIDE, a file over MAX_PIXELS
    values or MAX_VOLUME_BYTES of pixel data."""
    try:
        count = _value_count(dataset)
        rows, columns, frames = int(dataset.Rows), int(dataset.Columns), _frame_count(dataset)
        stored = _pixel_bytes(dataset)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageError(f"{path}: the DICOM header's image size (Rows, Columns, NumberOfFrames, SamplesPerPixel) "
                         f"is missing or not a number ({_one_line(exc)}); the header is damaged") from None
    if count <= 0:
        raise ImageError(f"{path}: the DICOM header says the image has {count} pixels (Rows x Columns x frames); "
                         "the header is damaged")
    if rows * columns > MAX_SLICE_PIXELS or max(rows, columns) > MAX_SIDE:
        check_pixel_count((rows, columns), path)
    if count > MAX_PIXELS or stored > MAX_VOLUME_BYTES:
        raise ImageError(f"{path}: the DICOM header says {count:,} pixel values ({rows}x{columns}, {frames} frames, "
                         f"{stored:,} bytes), more than the {MAX_PIXELS:,} values ({MAX_VOLUME_BYTES:,} bytes) this "
                         "reader holds in memory; split the file or downsample it")


def dicom_layout(path: str | Path) -> tuple[int, int, int] | None:
    """(frames, rows, columns) of a DICOM file from its header alone (nothing decoded, nothing inflated
    past the header), after the size checks; None when the header describes no image (the full read
    then says what the file is)."""
    path = Path(path)
    header = _read(path, stop_before_pixels=True)
    if "Rows" not in header and "Columns" not in header:
        return None
    with _damaged_header(path):
        _check_size(header, path)
        return _frame_count(header), int(header.Rows), int(header.Columns)


def _decode(dataset, path: Path, frame: int | None = None) -> np.ndarray:
    """All frames, or only ``frame`` (decoding the others neither in time nor in memory)."""
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
        if frame is None:
            return dataset.pixel_array
        _check_native_length(dataset, path)
        from pydicom.pixels import pixel_array

        return pixel_array(dataset, index=frame)
    except ImageError:
        raise
    except Exception as exc:  # pydicom raises many types for missing decoders or damaged data
        raise ImageError(f"{path}: cannot decode the pixel data (transfer syntax {_syntax_name(dataset)}): "
                         f"{_one_line(exc)}{_decoder_advice(dataset)}") from exc


def _check_native_length(dataset, path: Path) -> None:
    """Uncompressed pixel data shorter than the header's frames: decoding one frame would not notice."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or getattr(syntax, "is_encapsulated", True) or "PixelData" not in dataset:
        return
    have, need = len(dataset.PixelData), _pixel_bytes(dataset)
    if int(getattr(dataset, "BitsAllocated", 16) or 16) >= 8 and have < need:
        raise ImageError(f"{path}: cannot decode the pixel data (transfer syntax {_syntax_name(dataset)}): it holds "
                         f"{have:,} bytes but the header's {_frame_count(dataset)} frames need {need:,}; the file "
                         "is damaged")


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


def _group_items(dataset, sequence: str, frame: int = 0) -> Iterator:
    """The items of functional-group macro ``sequence`` that apply to ``frame`` of an enhanced image,
    most specific first: the frame's own group, then the shared group (PS3.3 C.7.6.16). Then the
    dataset itself, where single-frame images keep the same attributes."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = dataset.get(groups)
        if not items or not 0 <= index < len(items):
            continue
        inner = items[index].get(sequence)
        if inner:
            yield inner[0]
    yield dataset


def _modality_source(dataset, frame: int):
    """Where ``frame``'s modality LUT is: the first functional-group item with Rescale Slope and Intercept,
    else the dataset (top-level rescale or Modality LUT Sequence, read by pydicom)."""
    for item in _group_items(dataset, "PixelValueTransformationSequence", frame):
        if item is dataset or ("RescaleSlope" in item and "RescaleIntercept" in item):
            return item
    return dataset


def _window_of(item) -> tuple[float, float] | None:
    center, width = item.get("WindowCenter"), item.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        window = _first_value(center), _first_value(width)
    except (TypeError, ValueError, IndexError):
        return None
    return window if np.isfinite(window).all() and window[1] > 0 else None


def _first_in_groups(dataset, sequence: str, frame: int, read):
    """The first value ``read`` finds in ``frame``'s functional group ``sequence``, the shared one,
    then the top level; None when none has it."""
    for item in _group_items(dataset, sequence, frame):
        value = read(item)
        if value is not None:
            return value
    return None


def dicom_window(dataset, frame: int = 0) -> tuple[float, float] | None:
    """(centre, width) of ``frame``: its FrameVOILUTSequence, the shared one, then the top level."""
    return _first_in_groups(dataset, "FrameVOILUTSequence", frame, _window_of)


def _spacing_of(item) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = item.get(keyword)
            if value is None or isinstance(value, (str, bytes)) or len(value) != 2:
                continue
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
        if 0 < row < np.inf and 0 < col < np.inf:
            return row, col
    return None


def dicom_spacing(dataset, frame: int = 0) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm: PixelMeasuresSequence of the frame, the shared one, the top level."""
    return _first_in_groups(dataset, "PixelMeasuresSequence", frame, _spacing_of)


def _modality_lut(dataset, raw: np.ndarray, first_frame: int = 0, path: Path | None = None) -> np.ndarray:
    """pydicom's modality LUT, each frame with its own rescale (functional groups, then top level), one
    frame at a time (no float64 copy of the whole file); ``raw`` starts at frame ``first_frame``. ImageError
    when the result is NaN, infinite or beyond what float32 holds (a damaged rescale)."""
    from pydicom.pixels import apply_modality_lut

    frames = raw if raw.ndim == 3 else raw[None]
    values = np.empty(frames.shape, np.float32)
    for index in range(len(frames)):
        source = _modality_source(dataset, first_frame + index)
        try:
            values[index] = to_float32(apply_modality_lut(frames[index], source))
        except ImageError as exc:
            where = f"{path}: " if path is not None else ""
            raise ImageError(f"{where}after the modality LUT (rescale slope and intercept) {exc}") from None
    return values if raw.ndim == 3 else values[0]


def _values(dataset, raw: np.ndarray, first_frame: int = 0, path: Path | None = None
            ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Modality LUT, then the VOI LUT sequence for non-CT: the values before MONOCHROME1 is mirrored."""
    from pydicom.pixels import apply_voi

    values = _modality_lut(dataset, raw, first_frame, path)
    window = dicom_window(dataset, first_frame)
    if getattr(dataset, "Modality", "") != "CT" and "VOILUTSequence" in dataset:
        values = np.asarray(apply_voi(values, dataset), dtype=np.float32)
        window = None
    return values, window


def to_physical(dataset, raw: np.ndarray, first_frame: int = 0, value_range: tuple[float, float] | None = None,
                path: Path | None = None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Stored values -> (values (...,H,W) float32, display window): modality LUT (per frame), VOI LUT
    sequence for non-CT, MONOCHROME1 inverted after the VOI step (window mirrored too).

    ``raw`` may be some frames only, starting at ``first_frame``; MONOCHROME1 is then mirrored about
    ``value_range`` (the (min, max) of the whole file), so a frame read alone equals the same frame
    read with all the others. ``path`` names the file in errors."""
    if int(getattr(dataset, "SamplesPerPixel", 1)) == 3:
        return luminance(raw), None
    values, window = _values(dataset, raw, first_frame, path)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        low, high = value_range or (float(values.min()), float(values.max()))
        values = (low + high) - values
        if window is not None:
            window = (low + high - window[0], window[1])
    return values, window


def _value_range(dataset, path: Path, frames: int) -> tuple[float, float]:
    """(min, max) over all frames before mirroring, decoding one frame at a time."""
    low, high = np.inf, -np.inf
    for index in range(frames):
        values = _values(dataset, _decode(dataset, path, index), index, path)[0]
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high


def _patient_key(dataset) -> str | None:
    from .privacy import SecretError, pseudonymous_key

    for keyword, prefix in (("PatientID", "p"), ("StudyInstanceUID", "s")):
        value = str(getattr(dataset, keyword, "") or "").strip()
        if value:
            try:
                return pseudonymous_key(value, prefix)
            except SecretError as exc:  # not the file's fault: say so, not "damaged header"
                raise ImageError(f"cannot make the pseudonymous patient key: {exc}") from exc
    return None


def read_dicom_file(path: str | Path, frame: int | None = None) -> Volume:
    """One file: a single slice (Z = 1), all frames of a multi-frame image, or only its ``frame``
    (the others are not decoded). A deflated file is never inflated past what its header's image needs."""
    path = Path(path)
    dataset = _read(path)
    with _damaged_header(path):
        frames = _frame_count(dataset)
        samples = int(getattr(dataset, "SamplesPerPixel", 1))
        if frame is not None and not 0 <= frame < frames:
            raise ImageError(f"{path}: frame {frame} out of range 0..{frames - 1}")
        one = frame is not None and frames > 1
        raw = _decode(dataset, path, frame if one else None)
        if frames == 1 or one:
            raw = raw[None]
        if raw.ndim != (4 if samples == 3 else 3):
            raise ImageError(f"{path}: unexpected pixel array shape {raw.shape} for {frames} frame(s) of "
                             f"{samples} sample(s) per pixel; the header is inconsistent")
        first = frame if one else 0
        mirror = (_value_range(dataset, path, frames) if one and samples == 1
                  and getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1" else None)
        values, window = to_physical(dataset, raw, first, mirror, path)
        if not np.isfinite(values).all():
            raise ImageError(f"{path}: the pixel data holds NaN or infinite values")
        modality = str(getattr(dataset, "Modality", "OT"))
        drawn = _drawn(dataset, values.shape[-2:], 0) if frames == 1 and samples == 1 else []
        return Volume(values.astype(np.float32, copy=False), modality == "CT" and samples == 1, modality,
                      dicom_spacing(dataset, first), _slice_spacing(dataset), window,
                      [str(getattr(dataset, "SOPInstanceUID", "")) or None] * len(values), [path],
                      _patient_key(dataset), body_part=_body_part(dataset), drawn=drawn,
                      affine=_file_affine(dataset, first, len(values)))


def _drawn(dataset, shape, index: int) -> list:
    """[(index, DrawnOverlay)] for the closed outlines in a single-frame file's overlay planes."""
    from .overlays import drawn_overlays

    return [(index, overlay) for overlay in drawn_overlays(dataset, tuple(shape))]


def _body_part(dataset) -> str:
    """BodyPartExamined, stripped ("" when absent or unreadable)."""
    try:
        return str(getattr(dataset, "BodyPartExamined", "") or "").strip()
    except Exception:  # noqa: BLE001 - a damaged value: the domain check then reads the pixels instead
        return ""


def _vector(item, keyword: str, size: int) -> np.ndarray | None:
    """``keyword`` of ``item`` as ``size`` finite floats, or None (missing, wrong length, not numbers)."""
    try:
        value = item.get(keyword)
        vector = np.array(value, float) if value is not None and not isinstance(value, (str, bytes)) else None
    except (TypeError, ValueError):
        return None
    return vector if vector is not None and vector.shape == (size,) and np.isfinite(vector).all() else None


def _plane(dataset, frame: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """(ImagePositionPatient (3,), ImageOrientationPatient (6,)) of ``frame``: its functional groups, the
    shared one, then the top level; None when either is missing or nonsense (never an error: a read that
    did not need the geometry before does not fail on it now)."""
    try:
        position = _first_in_groups(dataset, "PlanePositionSequence", frame,
                                    lambda item: _vector(item, "ImagePositionPatient", 3))
        orientation = _first_in_groups(dataset, "PlaneOrientationSequence", frame,
                                       lambda item: _vector(item, "ImageOrientationPatient", 6))
    except Exception:  # noqa: BLE001 - a damaged functional group: the volume has no affine
        return None
    return None if position is None or orientation is None else (position, orientation)


def _affine(position: np.ndarray, orientation: np.ndarray, spacing: tuple[float, float] | None,
            step: np.ndarray) -> np.ndarray | None:
    """The LPS affine of Volume.affine: voxel (z, row, column, 1) -> mm. Column index runs along
    ImageOrientationPatient[:3] by PixelSpacing[1], row index along [3:] by PixelSpacing[0] (PS3.3
    C.7.6.2.1.1), slice index by ``step`` (mm, LPS); None when the matrix would not be invertible."""
    if spacing is None:
        return None
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = orientation[3:] * spacing[0]
    affine[:3, 2] = orientation[:3] * spacing[1]
    affine[:3, 3] = position
    return affine if np.isfinite(affine).all() and abs(np.linalg.det(affine[:3, :3])) > 1e-9 else None


def _normal_step(orientation: np.ndarray, spacing: float | None) -> np.ndarray:
    """One slice along the slice normal (row direction x column direction): ``spacing`` mm, else 1 mm
    (a single slice has no step; the matrix only needs one to be invertible)."""
    normal = np.cross(orientation[:3], orientation[3:])
    length = np.linalg.norm(normal)
    return normal / length * (spacing or 1.0) if length > 0 else normal


def _file_affine(dataset, first: int, count: int) -> np.ndarray | None:
    """Volume.affine of ``count`` frames of one file starting at ``first``: the first frame's plane, then the
    step between the first and last frames' positions (frames evenly spaced along one line, else None)."""
    plane = _plane(dataset, first)
    if plane is None:
        return None
    position, orientation = plane
    spacing = dicom_spacing(dataset, first)
    if count == 1:
        return _affine(position, orientation, spacing, _normal_step(orientation, _slice_spacing(dataset)))
    positions = [_plane(dataset, first + index) for index in range(count)]
    if any(p is None for p in positions):
        return None
    points = np.array([p[0] for p in positions])
    step = (points[-1] - points[0]) / (count - 1)
    expected = points[0] + np.arange(count)[:, None] * step
    if not np.allclose(points, expected, atol=1e-3 * max(1.0, float(np.linalg.norm(step)))):
        return None  # frames not on one evenly spaced line: no single affine places them
    return _affine(position, orientation, spacing, step)


def _series_affine(planes: list, pixel_spacing: tuple[float, float] | None,
                   spacing: float | None) -> np.ndarray | None:
    """Volume.affine of a sorted series from its slices' planes [(position, orientation) or None]: the first
    slice's plane and pixel spacing, and a step along the actual direction from the first to the last
    position (not the normal: a tilted gantry's slices are sheared) whose length is the median distance
    between neighbouring positions (one missing slice does not stretch the others). None when a slice
    does not say where it is; a single slice steps ``spacing`` (else 1 mm) along its normal.
    ``pixel_spacing``: the first slice's (row, column) spacing in mm."""
    if not planes or any(plane is None for plane in planes):
        return None
    position, orientation = planes[0]
    if len(planes) == 1:
        step = _normal_step(orientation, spacing)
    else:
        points = np.array([plane[0] for plane in planes])
        direction = points[-1] - points[0]
        length = np.linalg.norm(direction)
        if length == 0:
            return None
        step = direction / length * float(np.median(np.linalg.norm(np.diff(points, axis=0), axis=1)))
    return _affine(position, orientation, pixel_spacing, step)


def _slice_spacing(dataset) -> float | None:
    for item in _group_items(dataset, "PixelMeasuresSequence"):
        try:
            spacing = float(item.get("SpacingBetweenSlices", None) or 0)
        except (TypeError, ValueError):
            continue
        if 0 < spacing < np.inf:
            return spacing
    return None


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
    slices, uids, files, window, drawn = [], [], [], None, []
    for i in order:
        path = chosen[i][0]
        dataset = _read(path)
        values, slice_window = to_physical(dataset, _decode(dataset, path), path=path)
        if values.shape != (rows, columns):
            raise ImageError(f"{path}: expected one {rows}x{columns} slice per file in a series folder, got "
                             f"shape {values.shape}")
        if not np.isfinite(values).all():
            raise ImageError(f"{path}: the pixel data holds NaN or infinite values")
        drawn += _drawn(dataset, (rows, columns), len(slices))
        slices.append(values)
        uids.append(str(getattr(dataset, "SOPInstanceUID", "")) or None)
        files.append(path)
        window = window or slice_window
    first = chosen[order[0]][1]
    sorted_positions = [positions[i] for i in order]
    gaps = np.diff(sorted_positions) if all(p is not None for p in sorted_positions) and len(order) > 1 else []
    slice_spacing = float(np.median(gaps)) if len(gaps) and np.median(gaps) > 0 else None
    modality = str(getattr(first, "Modality", "OT"))
    hounsfield = modality == "CT" and int(getattr(first, "SamplesPerPixel", 1)) == 1
    affine = _series_affine([_plane(chosen[i][1]) for i in order], dicom_spacing(first), slice_spacing)
    return Volume(np.stack(slices).astype(np.float32), hounsfield, modality, dicom_spacing(first), slice_spacing,
                  window, uids, files, _patient_key(first), notes, _body_part(first), drawn, affine)


def _check_file(path: Path) -> None:
    """ImageError unless ``path`` is a regular, non-empty file: missing, a symlink loop, a FIFO...: says which."""
    from .files import check_regular_file

    check_regular_file(path)
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")


def read_dicom(path: str | Path, frame: int | None = None) -> Volume:
    """A DICOM file or a folder holding a series: the one DICOM reader (``read_dicom_slice``, the
    napari reader and ``image_io.read_slice`` all come here). ``frame`` reads only that frame of a
    multi-frame file (the others are not decoded).

    Every problem with the input (missing, empty, unreadable, truncated, not DICOM, no pixel
    data, a damaged header, an undecodable compression) raises ImageError naming the file.
    """
    path = Path(path)
    try:
        if path.is_dir():
            if frame is not None:
                raise ImageError(f"{path}: a series folder has no frames; open it whole, or give one of its files")
            return read_dicom_series(path)
        _check_file(path)
        return read_dicom_file(path, frame)
    except OSError as exc:  # a folder or file this user may not read
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def read_dicom_slice(path: str | Path, frame: int | None = None) -> Slice:
    """One slice of a DICOM file (``read_dicom``'s result, one slice of it); ``frame`` picks one of several.

    The header is read first: an image too large, or several frames with none chosen, is refused
    before any pixel is decoded (or inflated, for a deflated file); a chosen frame is decoded alone."""
    path = Path(path)
    try:
        _check_file(path)
        layout = dicom_layout(path)  # size checks from the header; None: no image (read_dicom says what it is)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    frames = layout[0] if layout is not None else 1
    if frames > 1:
        if frame is None:
            raise ImageError(f"{path}: this multi-frame DICOM holds {frames} slices of {layout[1:]}; "
                             f"choose one (--frame 0..{frames - 1})")
        if not 0 <= frame < frames:
            raise ImageError(f"{path}: frame {frame} out of range 0..{frames - 1}")
    return read_dicom(path, frame if frames > 1 else None).slice(0)
