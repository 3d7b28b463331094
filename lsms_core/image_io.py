"""Read one 2-D slice from DICOM, PNG/JPEG/TIFF or ``.npy`` into physical units.

CT comes back in Hounsfield units (the DICOM modality LUT applied); other images keep their
raw values, MONOCHROME1 inverted so that bright always means dense. Patient identifiers are
never copied out of the header: ``Slice`` carries only what segmentation and measurements need.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dicom import read_dicom_slice
from .files import check_regular_file, file_sha256  # noqa: F401 - re-exported
from .limits import MAX_SLICE_PIXELS
from .pixels import ImageError, Slice, check_slice, luminance
from .pixels import check_pixel_count as _check_pixel_count
from .pixels import one_line as _one_line

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


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
    check_regular_file(path, "an image file: give one DICOM, PNG, JPEG, TIFF or .npy file (a DICOM series folder "
                             "opens in napari)")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty (0 bytes)")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return _read_npy(path, frame, hounsfield)
        if suffix in PLAIN_IMAGE_SUFFIXES:
            return _read_plain_image(path, frame)
        if suffix in DICOM_SUFFIXES or _has_dicom_preamble(path):
            return read_dicom_slice(path, frame)
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
    array = _read_tiff(path, frame) if path.suffix.lower() in (".tif", ".tiff") else _read_with_pillow(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = luminance(array)
    return Slice(_checked(array, path), False, "OT", source=path)


def _is_stack(shape: tuple[int, ...]) -> bool:
    """A TIFF series of several slices: (N,H,W) grey, or (N,H,W,3|4) colour/palette."""
    return (len(shape) == 3 and shape[-1] not in (1, 3, 4)) or (len(shape) == 4 and shape[-1] in (3, 4))


def _read_tiff(path: Path, frame: int | None = None) -> np.ndarray:
    """One slice of a TIFF: sizes and the number of slices come from the header, a stack without ``frame``
    is refused before anything is decoded, and only the chosen page is decoded."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape = tuple(series.shape)
            _check_pixel_count(shape, path)
            key = None
            if _is_stack(shape):
                count = shape[0]
                if frame is None and count > 1:
                    raise ImageError(f"{path}: this TIFF stack holds {count} slices of {shape[1:]}; choose one "
                                     f"(--frame 0..{count - 1})")
                index = 0 if frame is None else frame
                if not 0 <= index < count:
                    raise ImageError(f"{path}: frame {frame} out of range 0..{count - 1}")
                key = index if len(series.pages) == count else None  # one page per slice: decode that page only
                if key is None and int(np.prod(shape, dtype=np.int64)) > 4 * MAX_SLICE_PIXELS:
                    raise ImageError(f"{path}: the TIFF holds {'x'.join(map(str, shape))} values in one page, too "
                                     "many to read at once; split the stack")
            elif int(np.prod(shape, dtype=np.int64)) > 4 * MAX_SLICE_PIXELS:
                raise ImageError(f"{path}: the TIFF holds {'x'.join(map(str, shape))} values, too many to "
                                 "read at once; split the stack")
            array = series.asarray(key=key) if key is not None else series.asarray()
            if key is None and _is_stack(shape):
                array = array[0 if frame is None else frame]
            colormap = getattr(series.keyframe, "colormap", None)
            if int(getattr(series.keyframe, "photometric", 0)) == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
                colormap = np.asarray(colormap)  # (3, 2**bits): indices -> RGB, never read as grey
                return np.moveaxis(np.take(colormap, array.astype(np.intp), axis=1, mode="clip"), 0, -1)
            return array.astype(np.uint8) * 255 if array.dtype == bool else array  # 1-bit: black and white
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
            return np.asarray(_pillow_values(image))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: the image is too large to open ({_one_line(exc)}); this reader accepts at most "
                         f"{MAX_SLICE_PIXELS:,} pixels: downsample it first") from exc
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # Pillow on damaged files: OSError, SyntaxError, ValueError, zlib.error, ...
        raise ImageError(f"{path}: not a readable image ({_one_line(exc)})") from exc


def _pillow_values(image):
    """The Pillow image in a mode whose array holds values, not codes: palette indices go through the
    palette, 1-bit becomes 0/255, grey+alpha drops the alpha, other colour spaces become RGB."""
    mode = image.mode
    if mode.startswith("I;16"):
        return image.convert("I;16")
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode in ("LA", "La"):
        return image.getchannel("L")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBa"):
        return image.convert("RGB")
    return image
