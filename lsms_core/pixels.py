"""What every reader shares, with NumPy only (no torch, no pydicom): the error a reader raises, the
checks a slice passes (2-D, real numbers, finite, within float32, within the size limits), colour to
grey, and ``Slice``, what a reader returns.

``dicom`` and ``image_io`` both import this module and not each other's internals, so neither imports
the other in a cycle; ``preprocessing`` re-exports the names it used to define (ImageError, check_slice...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .limits import MAX_SIDE, MAX_SLICE_PIXELS


class ImageError(ValueError):
    """The pixel data cannot be used as a slice; the message says what is wrong."""


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3 or 4) colour -> (H,W) float32 grey, ITU-R BT.601 weights (alpha ignored)."""
    return np.asarray(rgb)[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_slice(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as float32 (H,W) or raise ImageError naming the problem."""
    array = np.asarray(image)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise ImageError(f"expected one 2-D slice (H,W), got an array of shape {array.shape}: "
                         "pick one slice of a stack, or convert colour images to grey")
    if array.size == 0:
        raise ImageError("the image is empty (0 pixels)")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ImageError(f"pixel type {array.dtype} is not a real number type")
    return to_float32(array)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_float32(array: np.ndarray) -> np.ndarray:
    """``array`` (real numbers) as float32, or ImageError saying what is wrong: NaN or infinite pixels,
    or finite values too large for float32 (e.g. 1e300 in a float64 array: no image holds such values,
    and as float32 they would become infinite)."""
    array = np.asarray(array)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(np.float32, copy=False)
    finite = np.isfinite(converted)
    if finite.all():
        return converted
    bad = int(finite.size - np.count_nonzero(finite))
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:  # float64/longdouble: were they finite before?
        source_finite = np.isfinite(array)
        too_large = int(np.count_nonzero(source_finite & ~finite))
        if too_large:
            largest = float(np.max(np.abs(array[source_finite & ~finite])))
            nonfinite = bad - too_large
            also = f"; {nonfinite} more are NaN or infinite" if nonfinite else ""
            pixels = "1 pixel with a finite value" if too_large == 1 else f"{too_large} pixels with finite values"
            raise ImageError(f"the image has {pixels} far beyond any image's range (up to {largest:.3g} in magnitude; "
                             f"32-bit floats hold at most {FLOAT32_MAX:.3g}){also}: the array is damaged or wrongly "
                             "scaled; rescale or clip it first")
    raise ImageError(f"the image has {bad} NaN or infinite pixels: replace them (e.g. np.nan_to_num) first")


@dataclass
class Slice:
    """One slice and what is known of it.

    pixels: (H,W) float32, HU when ``hounsfield`` else raw values.
    spacing_mm: (row, column) pixel spacing in mm, or None when the file does not say.
    window: the file's own display window (center, width) in the units of ``pixels``, or None.
    sop_instance_uid: the DICOM instance UID (hash it before storing it anywhere).
    patient_key: pseudonymous key of the patient (HMAC of PatientID with this user's secret).
    body_part: the DICOM header's BodyPartExamined ("" when unknown).
    """

    pixels: np.ndarray
    hounsfield: bool
    modality: str
    spacing_mm: tuple[float, float] | None = None
    window: tuple[float, float] | None = None
    sop_instance_uid: str | None = None
    source: Path | None = None
    patient_key: str | None = None  # pseudonymous (lsms_core.privacy), never an identifier
    body_part: str = ""  # DICOM BodyPartExamined ("" when unknown): the model's domain check reads it

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]


def slice_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(H,W) of one slice of an array of ``shape``: a trailing channel axis (1, 3 or 4: grey, RGB, RGBA) and a
    leading stack axis are set aside. A slice shape of any other length counts all its axes."""
    dims = tuple(int(d) for d in shape)
    if len(dims) >= 3 and dims[-1] in (1, 3, 4):  # (..., H, W, C): the reader treats it so too
        dims = dims[:-1]
    while len(dims) > 2 and dims[0] == 1:  # (1, H, W) is that slice
        dims = dims[1:]
    return dims[-2:] if len(dims) >= 3 else dims  # (N, H, W): one slice is read at a time


def check_pixel_count(shape: tuple[int, ...], path: Path) -> None:
    """Refuse, before decoding, an image too large to hold (a damaged header, or not a medical slice): more
    than MAX_SLICE_PIXELS per slice, or a side over MAX_SIDE. A channel axis of 1 counts as colour does,
    so (20000, 20000, 1) is the 400 M pixel slice it is."""
    height_width = slice_shape(shape)
    count = int(np.prod(height_width, dtype=np.int64))
    if count > MAX_SLICE_PIXELS:
        raise ImageError(f"{path}: the image is {'x'.join(map(str, shape))}, {count:,} pixels per slice; this reader "
                         f"accepts at most {MAX_SLICE_PIXELS:,} (10000x10000): downsample it first")
    side = max(height_width, default=0)
    if side > MAX_SIDE:
        raise ImageError(f"{path}: the image is {'x'.join(map(str, shape))}, a side of {side:,} pixels; this reader "
                         f"accepts at most {MAX_SIDE:,} per side (no medical slice is that long; a damaged header?): "
                         "crop or downsample it first")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def pixels_and_units(image, hounsfield: bool | None) -> tuple[np.ndarray, bool]:
    """(pixels (H,W), hounsfield) of what a segmenter is given: a Slice (its own units unless ``hounsfield``
    says otherwise) or an array, for which ``hounsfield`` is required (CT in HU or not)."""
    if isinstance(image, Slice):
        return image.pixels, image.hounsfield if hounsfield is None else bool(hounsfield)
    if hounsfield is None:
        raise ValueError("say whether the array is CT in Hounsfield units (hounsfield=True) or not")
    return np.asarray(image), bool(hounsfield)
