"""Read one 2-D slice from DICOM, PNG/JPEG/TIFF or ``.npy`` into physical units.

CT comes back in Hounsfield units (the DICOM modality LUT applied); other images keep their
raw values, MONOCHROME1 inverted so that bright always means dense. Patient identifiers are
never copied out of the header: ``Slice`` carries only what segmentation and measurements need.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .preprocessing import ImageError, check_slice, luminance

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
MAX_SLICE_PIXELS = 100_000_000  # 10000x10000: above any CT, MR or radiograph; 400 MB as float32


@dataclass
class Slice:
    """One slice and what is known of it.

    pixels: (H,W) float32, HU when ``hounsfield`` else raw values.
    spacing_mm: (row, column) pixel spacing in mm, or None when the file does not say.
    window: the file's own display window (center, width) in the units of ``pixels``, or None.
    sop_instance_uid: the DICOM instance UID (hash it before storing it anywhere).
    patient_key: pseudonymous key of the patient (HMAC of PatientID with this user's secret).
    """

    pixels: np.ndarray
    hounsfield: bool
    modality: str
    spacing_mm: tuple[float, float] | None = None
    window: tuple[float, float] | None = None
    sop_instance_uid: str | None = None
    source: Path | None = None
    patient_key: str | None = None  # pseudonymous (lsms_core.privacy), never an identifier

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def looks_like_hounsfield(pixels: np.ndarray) -> bool:
    """Guess for unlabelled arrays: CT in HU has air/fat well below -200 and nothing far past 4000."""
    low, high = np.percentile(pixels, [1, 99.9])
    return bool(low < -200 and high < 5000)


def read_slice(path: str | os.PathLike, frame: int | None = None, hounsfield: bool | None = None) -> Slice:
    """Read a DICOM file, a PNG/JPEG/TIFF or a ``.npy`` array as one slice.

    frame: which frame of a multi-frame DICOM or which slice of a 3-D ``.npy`` or TIFF stack
    (required there). hounsfield: force the unit interpretation of ``.npy`` arrays (None: guess,
    see ``looks_like_hounsfield``); DICOM decides from its Modality, plain images are never HU.

    Every problem with the file (missing, empty, damaged, not an image, a stack without
    ``frame``, NaN or infinite pixels, more than MAX_SLICE_PIXELS) raises ImageError with a
    message that names the file; NaN and infinite values are refused, never replaced.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty (0 bytes)")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return _read_npy(path, frame, hounsfield)
        if suffix in PLAIN_IMAGE_SUFFIXES:
            return _read_plain_image(path, frame)
        if suffix in DICOM_SUFFIXES or _has_dicom_preamble(path):
            return read_dicom(path, frame)
    except OSError as exc:  # unreadable (permissions, I/O error): the libraries' own damage errors are caught below
        raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    raise ImageError(f"{path}: unsupported file type {suffix!r}; use DICOM, PNG, JPEG, TIFF or .npy")


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _pick_frame(array: np.ndarray, frame: int | None, path: Path, what: str) -> np.ndarray:
    if array.ndim == 2:
        return array
    if frame is None and array.shape[0] == 1:
        return array[0]
    if frame is None:
        raise ImageError(f"{path}: this {what} holds {array.shape[0]} slices of {array.shape[1:]}; "
                         f"choose one (--frame 0..{array.shape[0] - 1})")
    if not 0 <= frame < array.shape[0]:
        raise ImageError(f"{path}: frame {frame} out of range 0..{array.shape[0] - 1}")
    return array[frame]


def _checked(array: np.ndarray, path: Path) -> np.ndarray:
    """check_slice, with the file named in the message."""
    try:
        return check_slice(array)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def _check_pixel_count(shape: tuple[int, ...], path: Path) -> None:
    """Refuse, before decoding, an image too large to hold (a damaged header, or not a medical slice)."""
    height_width = shape[-3:-1] if len(shape) >= 3 and shape[-1] in (3, 4) else shape[-2:]  # colour: (..,H,W,C)
    count = int(np.prod(height_width, dtype=np.int64))
    if count > MAX_SLICE_PIXELS:
        raise ImageError(f"{path}: the image is {'x'.join(map(str, shape))}, {count:,} pixels per slice; this reader "
                         f"accepts at most {MAX_SLICE_PIXELS:,} (10000x10000): downsample it first")


class NpyError(ValueError):
    """A file that cannot be a plain .npy array; the message is the reason, without the path."""


def map_npy(path: Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped: only the header is read, nothing is unpickled.

    Raises NpyError with the reason (no NumPy header, an .npz archive, Python objects, shorter
    than its header says, a damaged header). Used by the reader and the dataset validator.
    """
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic != b"\x93NUMPY":
        raise NpyError("an .npz archive" if magic.startswith(b"PK") else "no NumPy header")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:  # a damaged header: ValueError, EOFError, tokenize errors, ...
        text = _one_line(exc)
        raise NpyError("it holds Python objects, which this reader never unpickles" if "objects" in text
                       else "the file is shorter than its header says (truncated?)" if "mmap length" in text
                       else f"damaged header: {text}") from exc


def _read_npy(path: Path, frame: int | None, hounsfield: bool | None) -> Slice:
    try:
        mapped = map_npy(path)  # the header only: no pixels read yet
    except NpyError as exc:
        raise ImageError(f"{path}: not a plain numeric .npy array ({exc}); save the slice with numpy.save") from exc
    if mapped.ndim not in (2, 3):
        raise ImageError(f"{path}: expected one 2-D slice (H,W) or a stack (N,H,W), got an array of shape "
                         f"{mapped.shape}")
    _check_pixel_count(mapped.shape, path)
    if mapped.ndim == 3 and mapped.shape[-1] not in (1, 3, 4):
        mapped = _pick_frame(mapped, frame, path, "array")
    pixels = _checked(np.array(mapped), path)
    units = looks_like_hounsfield(pixels) if hounsfield is None else hounsfield
    return Slice(pixels, units, "CT" if units else "OT", source=path)


def _read_plain_image(path: Path, frame: int | None = None) -> Slice:
    if path.suffix.lower() in (".tif", ".tiff"):
        array = _read_tiff(path)
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
            array = _pick_frame(array, frame, path, "TIFF stack")
    else:
        array = _read_with_pillow(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = luminance(array)
    return Slice(_checked(array, path), False, "OT", source=path)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            _check_pixel_count(tuple(series.shape), path)
            if int(np.prod(series.shape, dtype=np.int64)) > 4 * MAX_SLICE_PIXELS:
                raise ImageError(f"{path}: the TIFF holds {'x'.join(map(str, series.shape))} values, too many to "
                                 "read at once; split the stack")
            return series.asarray()
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile on damaged files: TiffFileError, ValueError, struct.error, ...
        raise ImageError(f"{path}: not a readable TIFF image ({_one_line(exc)})") from exc


def _read_with_pillow(path: Path) -> np.ndarray:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
            image = Image.open(path)
        with image:
            _check_pixel_count((image.size[1], image.size[0]), path)
            return np.asarray(image.convert("I;16") if image.mode.startswith("I;16") else image)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: the image is too large to open ({_one_line(exc)}); this reader accepts at most "
                         f"{MAX_SLICE_PIXELS:,} pixels: downsample it first") from exc
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # Pillow on damaged files: OSError, SyntaxError, ValueError, zlib.error, ...
        raise ImageError(f"{path}: not a readable image ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_dicom(path: Path, frame: int | None = None) -> Slice:
    """One DICOM slice in physical units (see lsms_core.dicom); ``frame`` picks one of several."""
    from .dicom import read_dicom_file

    volume = read_dicom_file(path)
    _check_pixel_count(volume.pixels.shape[-2:], path)
    if len(volume.pixels) == 1:
        return volume.slice(0)
    _pick_frame(volume.pixels, frame, path, "multi-frame DICOM")  # says how many frames when none is chosen
    return volume.slice(frame)
