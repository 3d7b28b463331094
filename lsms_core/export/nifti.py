"""A mask as NIfTI, in the image's world coordinates: nnU-Net, 3D Slicer, ITK-SNAP and FSL overlay it on the
NIfTI (or the DICOM series) it was drawn on, voxel for voxel.

Voxels are stored with i = column, j = row, k = slice of ``Volume.pixels`` (the order dcm2niix writes before
its flips), and the affine is ``Volume.affine`` (LPS) turned into NIfTI's RAS (x and y negated) and permuted
to that order; sform and qform both hold it (code 1, scanner), units mm, intent "label".
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..dicom import Volume
from ..pixels import ImageError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# (i, j, k, 1) -> (z, row, column, 1); a permutation, so its own inverse: also (z, row, column) -> (i, j, k)
_IJK_TO_ZRC = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)


def nifti_affine(volume: Volume) -> np.ndarray:
    """The RAS affine of a mask written for ``volume``: voxel (i=column, j=row, k=slice, 1) -> mm.

    From ``volume.affine`` when known. Otherwise from the spacings alone (1 mm where unknown), assuming the
    DICOM axial layout (columns towards the patient's left, rows posterior, slices superior, origin at 0):
    the diagonal diag(-column, -row, slice); such a mask overlays an image only in tools that ignore position.
    """
    if volume.affine is not None:
        lps = np.asarray(volume.affine, float)
    else:
        row, col = volume.spacing_mm or (1.0, 1.0)
        lps = np.diag([col, row, volume.slice_spacing_mm or 1.0, 1.0]) @ _IJK_TO_ZRC  # z->S, row->P, column->L
    return LPS_TO_RAS @ lps @ _IJK_TO_ZRC


def write_nifti_mask(mask: np.ndarray, volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``mask`` (Z,H,W) in ``volume.pixels``' voxel order as ``path`` (``.nii.gz`` compressed, or ``.nii``).

    mask: bool, or integer labels 0..255 (0 = background), stored as uint8. The affine is ``nifti_affine(volume)``
    (see there for a volume without ``affine``). The file is replaced atomically. ImageError when the mask's shape
    is not the volume's, its values do not fit uint8, or the path does not end in .nii or .nii.gz.
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise ImageError(f"{path}: a NIfTI mask is written as .nii.gz (compressed) or .nii; give such a name")
    mask = np.asarray(mask)
    if mask.shape != volume.pixels.shape:
        raise ImageError(f"{path}: the mask is {mask.shape} but the image volume is {volume.pixels.shape} (Z,H,W); "
                         "give one mask value per image voxel")
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise ImageError(f"{path}: the mask is {mask.dtype}; give a bool mask or integer labels 0..255")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ImageError(f"{path}: the mask's labels run {mask.min()}..{mask.max()}; NIfTI masks are written as "
                         "uint8 (0..255): renumber the labels")
    affine = nifti_affine(volume)
    image = nib.Nifti1Image(np.ascontiguousarray(mask.astype(np.uint8).transpose(2, 1, 0)), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)  # a sheared (tilted gantry) affine: the qform is its nearest rotation
    image.header.set_xyzt_units("mm")
    image.header.set_intent("label")
    data = image.to_bytes()
    atomic_write_bytes(path, gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
    return path
