"""Read a 3-D volume (NIfTI, NRRD, a DICOM series or file, a (Z,H,W) ``.npy``) as a ``dicom.Volume``.

Every volume comes out the way the DICOM reader gives an axial series:

- ``pixels`` (Z,H,W) float32, axial slices in radiological display orientation: the row index increases
  towards the patient's posterior, the column index towards the patient's left, the slice index towards
  superior (ascending position along the slice normal, as ``read_dicom_series`` sorts). In nibabel's axis
  codes (the direction each index increases towards) that is ("S", "P", "L").
- NIfTI (RAS world) and NRRD (its ``space``) voxel axes are permuted and flipped into that order with
  ``nibabel.orientations``; an oblique volume gets the nearest axes, and its affine stays exact.
- ``affine``: voxel (z, row, column, 1) -> patient mm in DICOM's LPS system (NIfTI's RAS with x and y negated);
  ``spacing_mm`` (row, column) and ``slice_spacing_mm`` are the lengths of the affine's columns (the real voxel
  steps; header fields such as a slice thickness are not used).
- Units: NIfTI values are scaled by scl_slope and scl_inter (nibabel's ``get_fdata``). ``hounsfield`` says
  whether the values are HU; None guesses with ``image_io.looks_like_hounsfield`` (the rule the 2-D ``.npy``
  reader uses): HU when the 1st percentile is below -200 (air outside the body is about -1000, padding
  -1024 or lower) and the 99.9th below 5000. DICOM decides from its Modality and ignores ``hounsfield``.
  ``modality`` is "CT" for HU, else "OT"; ``window`` is None (the display uses the soft-tissue default for HU).

Sizes are checked from the header before any voxel is read (``lsms_core.limits``). Every problem with the
input raises ImageError naming the file, saying what was wrong and what to do. No Qt, napari or torch here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dicom import Volume, read_dicom
from .files import check_regular_file
from .image_io import DICOM_SUFFIXES, NpyError, looks_like_hounsfield, map_npy
from .limits import MAX_VOLUME_PIXELS
from .pixels import ImageError, check_pixel_count, one_line, to_float32

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES  # what this module reads beyond DICOM and .npy
DISPLAY_AXES = ("S", "P", "L")  # nibabel axis codes of (z, row, column): see the module docstring
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse: LPS -> RAS too
_GUESS_VOXELS = 16_000_000  # the unit guess looks at every n-th slice, at most about this many voxels
_WHAT = ("a volume file: give a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), (Z,H,W) .npy or DICOM file, or a "
         "DICOM series folder")


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The NIfTI or NRRD suffix ``path`` ends with (".nii.gz", ".nii", ".nrrd", ".nhdr"; any case), else None."""
    name = str(path).lower()
    return next((suffix for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr") if name.endswith(suffix)), None)


def read_volume(path: str | os.PathLike, hounsfield: bool | None = None) -> Volume:
    """The volume at ``path`` (see the module docstring for the layout, units and affine).

    path: a ``.nii``/``.nii.gz`` (3-D, or 4-D holding one volume), a ``.nrrd``/``.nhdr``, a (Z,H,W) ``.npy``
    (first axis = slices, no geometry: affine and spacings None), a DICOM file or a DICOM series folder
    (``dicom.read_dicom``). hounsfield: whether the values are HU (None: guess; ignored for DICOM).
    """
    path = Path(path)
    try:
        if path.is_dir():
            return read_dicom(path)
        check_regular_file(path, _WHAT)
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty (0 bytes)")
        suffix = volume_suffix(path)
        if suffix in NIFTI_SUFFIXES:
            return _geometric_volume(path, *_read_nifti(path), hounsfield)
        if suffix in NRRD_SUFFIXES:
            return _geometric_volume(path, *_read_nrrd(path), hounsfield)
        if path.suffix.lower() == ".npy":
            return _npy_volume(path, hounsfield)
        if path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_preamble(path):
            return read_dicom(path)
    except OSError as exc:  # a file this user may not read, an I/O error
        raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    raise ImageError(f"{path}: unsupported file type {path.suffix!r}; give {_WHAT}")


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None, list[str]]:
    """(values (I,J,K) float32 in NIfTI voxel order, the RAS affine, None, notes), sizes checked first."""
    import nibabel as nib

    try:
        image = nib.load(path)  # the header only: the voxels stay on disk until get_fdata
        shape, affine = tuple(int(n) for n in image.shape), np.asarray(image.affine, float)
    except Exception as exc:  # nibabel: ImageFileError, HeaderDataError, EOFError, zlib.error, ...
        raise ImageError(f"{path}: not a readable NIfTI file ({one_line(exc)}); check that it is a complete "
                         ".nii or .nii.gz (copy it again from its source)") from exc
    shape = _spatial_shape(shape, path, "NIfTI")
    _check_size(_display_shape(shape, affine, path), path)
    try:
        values = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except MemoryError:
        raise
    except Exception as exc:  # a truncated or damaged data block, an RGB or complex voxel type
        raise ImageError(f"{path}: cannot read the NIfTI voxels ({one_line(exc)}); the file is truncated or "
                         "damaged, or its voxels are not real numbers (RGB, complex)") from exc
    return values, affine, None, []


def _spatial_shape(shape: tuple[int, ...], path: Path, kind: str) -> tuple[int, int, int]:
    """(I,J,K) of a 2-D, 3-D or 4-D+ shape whose axes past the third are all 1; ImageError otherwise."""
    if len(shape) < 2:
        raise ImageError(f"{path}: the {kind} holds a {len(shape)}-D array {shape}; expected a 3-D volume")
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        count = int(np.prod(shape[3:]))
        how = "with nibabel: image.slicer[..., t]" if kind == "NIfTI" else "in 3D Slicer, or with pynrrd"
        raise ImageError(f"{path}: the {kind} is {len(shape)}-D {shape}: {count} volumes (a time series or several "
                         f"channels), not one; save the volume to segment as a 3-D {kind} ({how})")
    return (tuple(shape[:3]) + (1,))[:3]


def _display_shape(shape: tuple[int, int, int], affine: np.ndarray | None, path: Path) -> tuple[int, int, int]:
    """(Z,H,W) the voxels will have once reoriented (stored order when there is no affine)."""
    if affine is None:
        return shape[2], shape[1], shape[0]
    transform = _to_display(affine, path)
    out = [0, 0, 0]
    for axis, (target, _) in enumerate(transform):
        out[int(target)] = shape[axis]
    return tuple(out)


def _check_size(shape: tuple[int, int, int], path: Path) -> None:
    """From the header: a slice within the 2-D limits, the volume within MAX_VOLUME_PIXELS."""
    if min(shape) <= 0:
        raise ImageError(f"{path}: the header says the volume is {'x'.join(map(str, shape))} voxels: it is empty "
                         "or the header is damaged")
    check_pixel_count(shape[1:], path)
    count = int(np.prod(shape, dtype=np.int64))
    if count > MAX_VOLUME_PIXELS:
        raise ImageError(f"{path}: the volume is {'x'.join(map(str, shape))}, {count:,} voxels, more than the "
                         f"{MAX_VOLUME_PIXELS:,} this reader holds in memory; crop or downsample it first")


def _to_display(ras_affine: np.ndarray, path: Path) -> np.ndarray:
    """nibabel orientation transform from the stored voxel axes to DISPLAY_AXES; ImageError for an affine
    that places no volume (not finite, or two axes collapsed onto one)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    linear = ras_affine[:3, :3]
    if not np.isfinite(ras_affine).all() or abs(np.linalg.det(linear)) < 1e-12 * max(1.0, np.abs(linear).max()) ** 3:
        raise ImageError(f"{path}: the voxel-to-world affine is degenerate ({np.round(linear, 4).tolist()}): the "
                         "header is damaged; fix its sform/qform (or space directions)")
    return ornt_transform(io_orientation(ras_affine), axcodes2ornt(DISPLAY_AXES))


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None, list[str]]:
    """(values (I,J,K) float32 in NRRD axis order, the RAS affine or None, per-axis spacings or None, notes)."""
    import nrrd

    try:
        header = nrrd.read_header(str(path))
        sizes = tuple(int(n) for n in header["sizes"])
    except Exception as exc:  # pynrrd: NRRDError, KeyError (a required field), ValueError, UnicodeDecodeError
        raise ImageError(f"{path}: not a readable NRRD header ({one_line(exc)}); check that it is a NRRD file "
                         "(it starts with 'NRRD000')") from exc
    spatial, affine, notes = _nrrd_geometry(header, sizes, path)
    shape = _spatial_shape(tuple(sizes[axis] for axis in spatial) + tuple(
        sizes[axis] for axis in range(len(sizes)) if axis not in spatial), path, "NRRD")
    _check_size(_display_shape(shape, affine, path), path)
    try:
        data, _ = nrrd.read(str(path), index_order="F")  # data[i, j, k]: axis 0 is the header's first
    except MemoryError:
        raise
    except Exception as exc:  # a missing detached data file, truncated or damaged (gzip) data
        raise ImageError(f"{path}: cannot read the NRRD data ({one_line(exc)}); for a .nhdr its data file must "
                         "sit where the header's 'data file' says") from exc
    order = list(spatial) + [axis for axis in range(data.ndim) if axis not in spatial]
    values = _as_float32(np.transpose(data, order).reshape(shape), path)
    spacings = None
    if affine is None:  # no patient space: the voxel steps are still known from either field
        directions, raw = header.get("space directions"), header.get("spacings")
        if directions is not None:
            spacings = tuple(float(np.linalg.norm(np.asarray(directions, float)[axis])) for axis in spatial)
        elif raw is not None and len(raw) == len(sizes):
            spacings = tuple(float(raw[axis]) for axis in spatial)
    return values, affine, spacings, notes


_NRRD_SPACES = {  # NRRD space -> the flips that make its axes RAS
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1), "right-anterior-superior-time": (1, 1, 1),
    "rast": (1, 1, 1), "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-anterior-superior-time": (-1, 1, 1), "last": (-1, 1, 1), "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1), "left-posterior-superior-time": (-1, -1, 1), "lpst": (-1, -1, 1)}


def _nrrd_geometry(header: dict, sizes: tuple[int, ...], path: Path) -> tuple[list[int], np.ndarray | None,
                                                                                 list[str]]:
    """(the spatial axes in header order, the RAS affine of those axes or None, notes).

    The affine needs a patient ``space`` (RAS, LAS, LPS), ``space directions`` and (else 0) ``space origin``;
    without them the first three axes are taken as (column, row, slice) with no affine."""
    directions = header.get("space directions")
    space = str(header.get("space", "")).strip().lower()
    if directions is None:
        kinds = [str(kind).lower() for kind in header.get("kinds", [])]
        spatial = [axis for axis, kind in enumerate(kinds) if kind in ("domain", "space")]
        if len(kinds) != len(sizes) or len(spatial) < 2:
            spatial = list(range(len(sizes)))
        return spatial[:3], None, ["the NRRD gives no space directions: shown in stored order (x as columns, y "
                                   "as rows, z as slices), with no patient orientation"]
    directions = np.array(directions, dtype=float)
    spatial = [axis for axis in range(len(directions)) if np.isfinite(directions[axis]).all()]
    if len(spatial) not in (2, 3) or directions.shape[1] != 3:
        raise ImageError(f"{path}: the NRRD has {len(spatial)} spatial axes in a {directions.shape[1]}-D space; "
                         "expected a 3-D volume")
    if space not in _NRRD_SPACES:
        return spatial, None, [f"the NRRD's space {space or 'is not given'!s} is no patient space (RAS, LAS, LPS): "
                               "shown in stored order, with no patient orientation"]
    flips = np.array(_NRRD_SPACES[space], float)
    affine = np.eye(4)
    for column, axis in enumerate(spatial):
        affine[:3, column] = directions[axis] * flips
    if len(spatial) == 2:  # one slice: a unit step along the normal keeps the matrix invertible
        normal = np.cross(affine[:3, 0], affine[:3, 1])
        affine[:3, 2] = normal / (np.linalg.norm(normal) or 1.0)
    origin = header.get("space origin")
    if origin is not None and np.isfinite(np.asarray(origin, float)).all():
        affine[:3, 3] = np.asarray(origin, float) * flips
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImageError(f"{path}: the NRRD's space directions are degenerate (two axes point the same way or one "
                         "is zero); the header is damaged")
    return spatial, affine, []


def _as_float32(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` as float32, or ImageError naming the file: not real numbers, NaN, infinite, beyond float32."""
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ImageError(f"{path}: voxel type {array.dtype} is not a real number type; save the volume as "
                         "integers or floats")
    try:
        return to_float32(array)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def _geometric_volume(path: Path, values: np.ndarray, ras_affine: np.ndarray | None,
                      spacings: tuple[float, ...] | None, notes: list[str], hounsfield: bool | None) -> Volume:
    """A Volume from voxels in stored (I,J,K) order: reoriented to (Z,H,W) display order when the affine is
    known (LPS affine, spacings from it), else transposed to (K,J,I) with ``spacings`` (I,J,K) if given."""
    from nibabel.orientations import aff2axcodes, apply_orientation, inv_ornt_aff

    values = _as_float32(values, path)
    if ras_affine is None:
        pixels, affine = np.ascontiguousarray(values.transpose(2, 1, 0)), None
        known = spacings is not None and all(0 < s < np.inf for s in spacings)
        spacing = (spacings[1], spacings[0]) if known else None
        slice_spacing = spacings[2] if known and len(spacings) > 2 else None
    else:
        transform = _to_display(ras_affine, path)
        pixels = np.ascontiguousarray(apply_orientation(values, transform))
        affine = RAS_TO_LPS @ ras_affine @ inv_ornt_aff(transform, values.shape)
        steps = np.linalg.norm(affine[:3, :3], axis=0)
        spacing, slice_spacing = (float(steps[1]), float(steps[2])), float(steps[0])
        stored = "".join(aff2axcodes(ras_affine))
        if stored != "".join(DISPLAY_AXES):
            notes = notes + [f"stored with voxel axes towards {stored} (RAS codes): reoriented to axial slices"]
    units = _guess_units(pixels) if hounsfield is None else bool(hounsfield)
    return Volume(pixels, units, "CT" if units else "OT", spacing, slice_spacing, None, [], [path], None, notes,
                  affine=affine)


def _guess_units(pixels: np.ndarray) -> bool:
    """``looks_like_hounsfield`` on every n-th slice (at most about _GUESS_VOXELS voxels: a percentile of a
    whole large volume takes seconds and says the same)."""
    step = max(1, int(np.ceil(pixels.size / _GUESS_VOXELS)))
    return looks_like_hounsfield(pixels[::step]) if step < len(pixels) else looks_like_hounsfield(pixels)


def _npy_volume(path: Path, hounsfield: bool | None) -> Volume:
    """A (Z,H,W) (or one (H,W) slice) ``.npy``: first axis = slices, no geometry."""
    try:
        mapped = map_npy(path)  # the header only: nothing is read or unpickled yet
    except NpyError as exc:
        raise ImageError(f"{path}: not a plain numeric .npy array ({exc}); save the volume with numpy.save") from exc
    if mapped.ndim not in (2, 3):
        raise ImageError(f"{path}: expected a volume (Z,H,W) or one slice (H,W), got an array of shape "
                         f"{mapped.shape}; save the volume with slices on the first axis")
    shape = mapped.shape if mapped.ndim == 3 else (1, *mapped.shape)
    _check_size(tuple(int(n) for n in shape), path)
    pixels = _as_float32(np.array(mapped).reshape(shape), path)
    units = _guess_units(pixels) if hounsfield is None else bool(hounsfield)
    return Volume(pixels, units, "CT" if units else "OT", files=[path])
