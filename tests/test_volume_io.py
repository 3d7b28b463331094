"""3-D volumes from NIfTI, NRRD, DICOM and .npy: one layout (axial, radiological, ascending z), one LPS affine.

Every geometry check goes through world coordinates: a voxel of the read volume and the voxel of the file
it came from must sit at the same point in the patient, and hold the same value.
"""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest

from conftest import write_ct_series
from lsms_core.dicom import read_dicom
from lsms_core.preprocessing import ImageError
from lsms_core.volume_io import read_volume

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("LSMS_NAPARI_SECRET", "test-secret")


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _ras_affine(linear: np.ndarray, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, origin
    return affine


def _assert_same_voxels_in_world(volume, data: np.ndarray, ras_affine: np.ndarray, rng, samples: int = 200):
    """Every sampled voxel (i,j,k) of the file's array lands, through the two affines, on a voxel of
    ``volume`` that holds the same value."""
    inverse = np.linalg.inv(volume.affine)
    for _ in range(samples):
        ijk = [int(rng.integers(n)) for n in data.shape[:3]]
        world_lps = LPS @ ras_affine @ [*ijk, 1]
        index = (inverse @ world_lps)[:3]
        zrc = np.round(index).astype(int)
        np.testing.assert_allclose(index, zrc, atol=1e-4)
        assert volume.pixels[tuple(zrc)] == pytest.approx(float(data[tuple(ijk)]), abs=1e-3)


def _assert_display_orientation(affine: np.ndarray):
    """Columns towards the patient's left (+x LPS), rows towards posterior (+y), slices towards superior (+z):
    each voxel axis' dominant world component is that one, positive."""
    for axis, world in ((0, 2), (1, 1), (2, 0)):
        column = affine[:3, axis]
        assert np.argmax(np.abs(column)) == world and column[world] > 0, affine


def test_nifti_ct_is_scaled_to_hu_reoriented_and_placed(tmp_path, rng):
    raw = rng.integers(0, 2000, (7, 6, 5)).astype(np.int16)  # stored values; HU = raw - 1024
    affine = _ras_affine(np.diag([0.7, 0.8, 2.5]), [-30.0, 12.0, 40.0])  # RAS storage, as nibabel tutorials save
    image = nib.Nifti1Image(raw, affine)
    image.header.set_slope_inter(1.0, -1024.0)
    nib.save(image, tmp_path / "ct.nii.gz")
    volume = read_volume(tmp_path / "ct.nii.gz")
    assert volume.pixels.shape == (5, 6, 7) and volume.pixels.dtype == np.float32
    assert volume.hounsfield and volume.modality == "CT" and volume.window is None  # min -1024: guessed HU
    assert volume.spacing_mm == pytest.approx((0.8, 0.7)) and volume.slice_spacing_mm == pytest.approx(2.5)
    _assert_display_orientation(volume.affine)
    _assert_same_voxels_in_world(volume, raw.astype(np.float32) - 1024, affine, rng)
    # RAS storage: i runs towards the right, so column 0 (the patient's right edge) is the last i
    assert volume.pixels[0, 0, 0] == raw[6, 5, 0] - 1024
    assert volume.files == [tmp_path / "ct.nii.gz"] and any("RAS" in note for note in volume.notes)


def test_oblique_sagittal_nifti_becomes_axial_slices(tmp_path, rng):
    data = rng.normal(40, 30, (9, 8, 7)).astype(np.float32)
    # stored sagittal (i towards anterior, j inferior, k right), rotated 0.3 rad about z: an oblique volume
    linear = _rotation(0.3) @ np.array([[0, 0, 1.1], [0.9, 0, 0], [0, -1.3, 0]])
    affine = _ras_affine(linear, [5.0, -7.0, 11.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "sag.nii")
    volume = read_volume(tmp_path / "sag.nii", hounsfield=False)
    assert volume.pixels.shape == (8, 9, 7)  # z from j, rows from i, columns from k
    assert not volume.hounsfield and volume.modality == "OT"
    _assert_display_orientation(volume.affine)
    np.testing.assert_allclose(np.linalg.norm(volume.affine[:3, :3], axis=0), [1.3, 0.9, 1.1], atol=1e-5)
    assert (volume.slice_spacing_mm, *volume.spacing_mm) == pytest.approx((1.3, 0.9, 1.1), abs=1e-5)
    _assert_same_voxels_in_world(volume, data, affine, rng)


def _dcm2niix_like(folder, volume_files) -> tuple[np.ndarray, np.ndarray]:
    """The NIfTI array and RAS affine dcm2niix would make of a sorted axial series, derived from the DICOM
    headers alone: i = column, j = row flipped (so that j runs anterior), k = slice."""
    headers = [pydicom.dcmread(f) for f in volume_files]
    stack = np.stack([pydicom.pixels.apply_modality_lut(h.pixel_array, h) for h in headers]).astype(np.float32)
    first, last = headers[0], headers[-1]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    orientation = np.array(first.ImageOrientationPatient, float)
    origin = np.array(first.ImagePositionPatient, float)
    step = (np.array(last.ImagePositionPatient, float) - origin) / (len(headers) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = orientation[:3] * col_spacing, orientation[3:] * row_spacing
    lps[:3, 2], lps[:3, 3] = step, origin
    data = stack.transpose(2, 1, 0)  # (column, row, slice)
    rows = data.shape[1]
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1, rows - 1
    return np.ascontiguousarray(data[:, ::-1, :]), LPS @ lps @ flip


def test_nifti_of_a_dicom_series_reads_like_the_series(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    write_ct_series(series, count=4, spacing_mm=2.5)
    dicom = read_dicom(series)
    data, affine = _dcm2niix_like(series, dicom.files)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "series.nii.gz")
    volume = read_volume(tmp_path / "series.nii.gz")
    np.testing.assert_array_equal(volume.pixels, dicom.pixels)
    np.testing.assert_allclose(volume.affine, dicom.affine, atol=1e-4)
    assert volume.spacing_mm == pytest.approx(dicom.spacing_mm) and volume.slice_spacing_mm == pytest.approx(2.5)
    assert volume.hounsfield


def test_dicom_series_affine_follows_ipp_iop_and_pixel_spacing(tmp_path):
    write_ct_series(tmp_path, count=3, spacing_mm=4.0)
    volume = read_volume(tmp_path)  # a folder: the DICOM reader
    for z, path in enumerate(volume.files):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        orientation, (row_spacing, col_spacing) = np.array(header.ImageOrientationPatient, float), header.PixelSpacing
        for row, col in ((0, 0), (10, 3), (511, 500)):
            expected = (np.array(header.ImagePositionPatient, float) + col * float(col_spacing) * orientation[:3]
                        + row * float(row_spacing) * orientation[3:])  # PS3.3 C.7.6.2.1.1
            np.testing.assert_allclose((volume.affine @ [z, row, col, 1])[:3], expected, atol=1e-6)
    _assert_display_orientation(volume.affine)


def test_tilted_gantry_series_steps_along_the_positions(tmp_path):
    write_ct_series(tmp_path, count=4, spacing_mm=2.0)
    for path in tmp_path.iterdir():
        header = pydicom.dcmread(path)
        x, y, z = (float(v) for v in header.ImagePositionPatient)
        header.ImagePositionPatient = [x, y + 0.5 * z, z]  # each slice shifted 1 mm posterior per 2 mm up
        header.save_as(path)
    volume = read_volume(tmp_path)
    np.testing.assert_allclose(volume.affine[:3, 0], [0.0, 1.0, 2.0], atol=1e-6)
    last = pydicom.dcmread(volume.files[-1], stop_before_pixels=True)
    np.testing.assert_allclose((volume.affine @ [3, 0, 0, 1])[:3], [float(v) for v in last.ImagePositionPatient])


def test_single_dicom_file_affine_and_none_without_geometry():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("693_UNCI.dcm")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    volume = read_volume(path)
    np.testing.assert_allclose(volume.affine[:3, 3], [float(v) for v in header.ImagePositionPatient])
    np.testing.assert_allclose(volume.affine[:3, 2], [0.478516, 0, 0])
    assert read_volume(get_testdata_file("RG1_UNCI.dcm")).affine is None  # a radiograph: not placed in the patient


def test_nrrd_in_lps_or_ras_space_and_detached_header_read_alike(tmp_path, rng):
    data = rng.integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
    linear = _rotation(-0.2) @ np.diag([0.6, 0.7, 3.0])
    ras = _ras_affine(linear, [1.0, 2.0, 3.0])
    lps = LPS @ ras
    nrrd.write(str(tmp_path / "lps.nrrd"), data, {"space": "left-posterior-superior",
                                                  "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]})
    nrrd.write(str(tmp_path / "ras.nhdr"), data, {"space": "RAS", "space directions": ras[:3, :3].T,
                                                  "space origin": ras[:3, 3], "encoding": "gzip"},
               detached_header=True)
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "same.nii.gz")
    volumes = [read_volume(tmp_path / name) for name in ("lps.nrrd", "ras.nhdr", "same.nii.gz")]
    for volume in volumes:
        _assert_same_voxels_in_world(volume, data, ras, rng, samples=60)
        np.testing.assert_array_equal(volume.pixels, volumes[0].pixels)
        np.testing.assert_allclose(volume.affine, volumes[0].affine, atol=1e-4)
    assert volumes[0].spacing_mm == pytest.approx((0.7, 0.6)) and volumes[0].slice_spacing_mm == pytest.approx(3.0)


def test_nrrd_without_space_keeps_stored_order_and_spacings(tmp_path, rng):
    data = rng.normal(size=(6, 5, 4)).astype(np.float32)
    nrrd.write(str(tmp_path / "plain.nrrd"), data, {"spacings": [0.5, 0.6, 2.0]})
    volume = read_volume(tmp_path / "plain.nrrd", hounsfield=False)
    np.testing.assert_array_equal(volume.pixels, data.transpose(2, 1, 0))
    assert volume.affine is None and volume.spacing_mm == (0.6, 0.5) and volume.slice_spacing_mm == 2.0
    assert any("no space directions" in note for note in volume.notes)
    scanner = {"space": "scanner-xyz", "space directions": np.diag([0.5, 0.6, 2.0])}
    nrrd.write(str(tmp_path / "scanner.nrrd"), data, scanner)
    volume = read_volume(tmp_path / "scanner.nrrd", hounsfield=False)  # a space with no patient in it
    np.testing.assert_array_equal(volume.pixels, data.transpose(2, 1, 0))
    assert volume.affine is None and volume.spacing_mm == (0.6, 0.5) and volume.slice_spacing_mm == 2.0
    assert any("no patient space" in note for note in volume.notes)


def test_npy_volume_units_guessed_or_given(tmp_path, rng):
    ct = (rng.normal(0, 300, (4, 16, 16)) - 1024 * (rng.random((4, 16, 16)) < 0.3)).astype(np.float32)
    np.save(tmp_path / "ct.npy", ct)
    volume = read_volume(tmp_path / "ct.npy")
    np.testing.assert_array_equal(volume.pixels, ct)
    assert volume.hounsfield and volume.modality == "CT" and volume.affine is None and volume.spacing_mm is None
    assert not read_volume(tmp_path / "ct.npy", hounsfield=False).hounsfield
    np.save(tmp_path / "mr.npy", rng.uniform(0, 800, (3, 8, 8)))
    assert read_volume(tmp_path / "mr.npy").modality == "OT"


def test_four_d_nifti_with_one_volume_is_read(tmp_path, rng):
    data = rng.integers(-1024, 500, (4, 5, 3, 1)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "one.nii.gz")
    assert read_volume(tmp_path / "one.nii.gz").pixels.shape == (3, 5, 4)


def _nifti_header_only(path, shape):
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    path.write_bytes(header.binaryblock + b"\0" * 4)  # 352 bytes: the header promises voxels that are not there


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"not a nifti at all" * 30), "not a readable NIfTI"),
    (lambda p: nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), np.eye(4)), p), "2 volumes"),
    (lambda p: nib.save(nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)), p), "NaN"),
    (lambda p: _degenerate_nifti(p), "degenerate"),
    (lambda p: _nifti_header_only(p, (2000, 2000, 200)), "400,000,000"),
    (lambda p: _nifti_header_only(p, (25_000, 4, 2)), "per side"),
    (lambda p: _truncated_nifti(p), "cannot read the NIfTI voxels"),
])
def test_bad_nifti_says_what_is_wrong_and_names_the_file(tmp_path, make, message):
    path = tmp_path / "bad.nii"
    make(path)
    with pytest.raises(ImageError, match=message) as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


def _degenerate_nifti(path):
    image = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), None)
    image.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # the j axis collapsed: no volume in space
    nib.save(image, path)


def _truncated_nifti(path):
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:2000])


@pytest.mark.parametrize("name,make,message", [
    ("bad.nrrd", lambda p: p.write_text("NRRD0004\ngarbage\n"), "not a readable NRRD header"),
    ("bad.nrrd", lambda p: nrrd.write(str(p), np.zeros((3, 4, 5, 2), np.int16),
                                      {"space": "RAS", "kinds": ["domain", "domain", "domain", "list"],
                                       "space directions": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [np.nan] * 3]}),
     "2 volumes"),
    ("bad.nhdr", lambda p: nrrd.write(str(p), np.zeros((3, 4, 5), np.int16), {"space": "RAS", "encoding": "raw"},
                                      detached_header=True) or (p.parent / "bad.raw").unlink(),
     "cannot read the NRRD data"),
])
def test_bad_nrrd_says_what_is_wrong_and_names_the_file(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageError, match=message) as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


def test_bad_npy_and_unknown_suffix(tmp_path):
    np.save(tmp_path / "four.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(ImageError, match="four.npy.*expected a volume"):
        read_volume(tmp_path / "four.npy")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageError, match="notes.txt.*unsupported file type"):
        read_volume(tmp_path / "notes.txt")


def test_volume_io_imports_no_torch_qt_or_napari():
    code = ("import sys, lsms_core.volume_io, lsms_core.export.nifti, lsms_core.export.dicom_seg; "
            "print(sorted(m for m in ('torch', 'napari', 'qtpy', 'PySide6') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
