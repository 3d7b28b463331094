"""The napari side of 3-D volumes: NIfTI and NRRD through the plugin's reader, and the LiTS volume sample."""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pytest

from lsms_core.preprocessing import ImageError
from lsms_core.windows import DEFAULT_WINDOW
from lsms_napari._reader import napari_get_reader


def _ct_nifti(path, rng) -> np.ndarray:
    """A CT volume stored RAS with anisotropic voxels; returns its HU values as (i,j,k)."""
    hu = rng.integers(-1024, 600, (20, 16, 6)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([0.7, 0.8, 3.0, 1.0])), path)
    return hu


def test_nifti_opens_as_one_3d_hu_layer_with_the_voxel_spacing(make_napari_viewer, tmp_path, rng):
    hu = _ct_nifti(tmp_path / "liver.nii.gz", rng)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "liver.nii.gz"), plugin="lsms-napari")
    assert layer.name == "liver" and layer.ndim == 3
    assert layer.data.shape == (6, 16, 20)  # axial slices, rows and columns swapped to radiological display
    np.testing.assert_allclose(layer.scale, [3.0, 0.8, 0.7])  # (slice spacing, row, column) mm
    np.testing.assert_array_equal(layer.data, hu.transpose(2, 1, 0)[:, ::-1, ::-1])  # RAS -> (S, P, L)
    assert layer.metadata["lsms"]["hounsfield"] is True and layer.metadata["lsms"]["modality"] == "CT"
    np.testing.assert_allclose(layer.contrast_limits, DEFAULT_WINDOW.limits)  # HU without a window: soft tissue


def test_nrrd_opens_through_the_plugin(make_napari_viewer, tmp_path, rng):
    data = rng.normal(100, 20, (8, 7, 5)).astype(np.float32)
    nrrd.write(str(tmp_path / "mr.nrrd"), data, {"space": "left-posterior-superior",
                                                 "space directions": np.diag([0.5, 0.6, 2.0])})
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "mr.nrrd"), plugin="lsms-napari")
    assert layer.data.shape == (5, 7, 8)  # LPS storage is already (column, row, slice) in display order
    np.testing.assert_allclose(layer.scale, [2.0, 0.6, 0.5])
    assert layer.metadata["lsms"]["hounsfield"] is False


def test_reader_claims_volumes_and_explains_a_bad_one(tmp_path):
    for name in ("a.nii", "b.nii.gz", "c.NII.GZ", "d.nrrd", "e.nhdr"):
        assert napari_get_reader(str(tmp_path / name)) is not None, name
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(ImageError, match="broken.nii.gz: not a readable NIfTI"):
        napari_get_reader(str(bad))(str(bad))


def test_lits_volume_sample_opens_as_a_3d_hu_image(make_napari_viewer, lits):
    viewer = make_napari_viewer()
    [layer] = viewer.open_sample("lsms-napari", "lits-volume")
    assert layer.name == "LiTS case 117 (volume)" and layer.data.shape == (128, 128, 128)
    np.testing.assert_array_equal(layer.data, lits.hu)
    np.testing.assert_allclose(layer.scale, [1.0, 1.0, 1.0])  # no spacing is stored with this volume
    info = layer.metadata["lsms"]
    assert info["hounsfield"] is True and info["modality"] == "CT" and info["patient_key"] == "lits-117"
    assert "spacing unknown" in info["description"]
