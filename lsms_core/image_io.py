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

    frame: which frame of a multi-frame DICOM or which slice of a 3-D ``.npy`` (required there).
    hounsfield: force the unit interpretation of ``.npy`` arrays (None: guess, see
    ``looks_like_hounsfield``); DICOM decides from its Modality, plain images are never HU.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, frame, hounsfield)
    if suffix in PLAIN_IMAGE_SUFFIXES:
        return _read_plain_image(path)
    if suffix in DICOM_SUFFIXES or _has_dicom_preamble(path):
        return read_dicom(path, frame)
    raise ImageError(f"{path}: unsupported file type {suffix!r}; use DICOM, PNG, JPEG, TIFF or .npy")


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _pick_frame(array: np.ndarray, frame: int | None, path: Path, what: str) -> np.ndarray:
    if array.ndim == 2:
        return array
    if frame is None:
        raise ImageError(f"{path}: this {what} holds {array.shape[0]} slices of {array.shape[1:]}; "
                         f"choose one (--frame 0..{array.shape[0] - 1})")
    if not 0 <= frame < array.shape[0]:
        raise ImageError(f"{path}: frame {frame} out of range 0..{array.shape[0] - 1}")
    return array[frame]


def _read_npy(path: Path, frame: int | None, hounsfield: bool | None) -> Slice:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ImageError(f"{path}: not a plain numeric .npy array ({exc})") from exc
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
        array = _pick_frame(array, frame, path, "array")
    pixels = check_slice(array)
    units = looks_like_hounsfield(pixels) if hounsfield is None else hounsfield
    return Slice(pixels, units, "CT" if units else "OT", source=path)


def _read_plain_image(path: Path) -> Slice:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("I;16") if image.mode.startswith("I;16") else image)
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"{path}: not a readable image ({exc})") from exc
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = luminance(array)
    return Slice(check_slice(array), False, "OT", source=path)


def read_dicom(path: Path, frame: int | None = None) -> Slice:
    """One DICOM slice in physical units (see lsms_core.dicom); ``frame`` picks one of several."""
    from .dicom import read_dicom_file

    volume = read_dicom_file(path)
    if len(volume.pixels) == 1:
        return volume.slice(0)
    _pick_frame(volume.pixels, frame, path, "multi-frame DICOM")  # says how many frames when none is chosen
    return volume.slice(frame)
