"""napari reader for DICOM (one file, single or multi-frame, or a folder holding a series) and for 3-D
NIfTI (.nii, .nii.gz) and NRRD (.nrrd, .nhdr) volumes (lsms_core.volume_io: axial slices, HU for CT).

PNG, JPEG, TIFF and .npy are left to napari's own readers.
"""

from __future__ import annotations

from pathlib import Path

from lsms_core.dicom import read_dicom
from lsms_core.volume_io import read_volume, volume_suffix

from .layers import drawn_layer_data, volume_layer_data

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except (OSError, ValueError):  # unreadable, a folder, a name with a NUL byte
        return False


def napari_get_reader(path):
    """The reader function if ``path`` is a NIfTI or NRRD file, a DICOM file or a folder with DICOM files, else None.

    Never raises: a path it cannot look into (no permission, a broken link) is left to other readers.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        path = Path(path)
        if path.is_dir():
            files = [p for p in sorted(path.iterdir())[:50] if p.is_file()]
            return read_dicom_layers if any(_looks_like_dicom(p) for p in files) else None
    except (OSError, TypeError, ValueError):
        return None
    if volume_suffix(path) is not None:
        return read_volume_layers
    return read_dicom_layers if _looks_like_dicom(path) else None


def read_dicom_layers(path) -> list[tuple]:
    """[(data, kwargs, "image")]: values in HU for CT, spacing as scale, the file's window as contrast;
    then one Labels layer per overlay plane holding outlines drawn in the file ("drawn in the file").

    Raises lsms_core.preprocessing.ImageError (and nothing else for a bad file) with a message
    naming the file and the problem; napari shows it as a notification.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    volume = read_dicom(path)
    name = path.stem if path.is_file() else path.name
    return [volume_layer_data(volume, name), *drawn_layer_data(volume, name)]


def read_volume_layers(path) -> list[tuple]:
    """[(data (Z,H,W), kwargs, "image")] for a NIfTI or NRRD volume: axial slices in radiological display
    orientation, HU for CT (guessed from the values), scale (slice spacing, row, column) in mm.

    Raises lsms_core.preprocessing.ImageError with a message naming the file (napari shows it).
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    volume = read_volume(path)
    name = path.name[:-len(volume_suffix(path) or "")] or path.name
    return [volume_layer_data(volume, name)]
