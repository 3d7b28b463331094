"""DICOM reading checked against pydicom's own modality and VOI LUT output."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from conftest import write_ct_series
from lsms_core.dicom import read_dicom
from lsms_core.preprocessing import ImageError


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("LSMS_NAPARI_SECRET", "test-secret")


def test_ct_hu_window_spacing_and_pseudonymous_key():
    path = get_testdata_file("693_UNCI.dcm")
    ds = pydicom.dcmread(path)
    volume = read_dicom(path)
    np.testing.assert_array_equal(volume.pixels[0], apply_modality_lut(ds.pixel_array, ds))
    assert volume.hounsfield and volume.window == (40.0, 100.0)
    assert volume.spacing_mm == (0.478516, 0.478516)
    assert volume.patient_key.startswith("p-") and str(ds.PatientID) not in volume.patient_key


def test_monochrome1_is_inverted_after_the_voi_step():
    path = get_testdata_file("RG1_UNCI.dcm")
    ds = pydicom.dcmread(path)
    volume = read_dicom(path)
    center, width = volume.window
    shown = np.clip((volume.pixels[0] - (center - width / 2)) / width, 0, 1)  # what napari displays
    voi = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
    pydicom_display = 1.0 - voi / (2 ** ds.BitsStored - 1)  # MONOCHROME1: high VOI output is dark
    np.testing.assert_allclose(shown, pydicom_display, atol=2e-3)
    assert volume.spacing_mm is None  # PixelSpacing 0\\0 means unknown


def test_series_folder_is_sorted_along_the_slice_normal(tmp_path):
    write_ct_series(tmp_path, count=4, spacing_mm=2.5)
    (tmp_path / "notes.txt").write_text("not dicom")
    volume = read_dicom(tmp_path)
    assert volume.pixels.shape == (4, 512, 512)
    steps = np.diff(volume.pixels[:, 100, 100])
    np.testing.assert_array_equal(steps, [10, 10, 10])  # ascending position, not file or instance order
    assert volume.slice_spacing_mm == pytest.approx(2.5)
    assert any("not DICOM" in note for note in volume.notes)
    assert volume.slice(2).sop_instance_uid == volume.sop_instance_uids[2]


def test_multiframe_file_gives_all_frames():
    volume = read_dicom(get_testdata_file("eCT_Supplemental.dcm"))
    assert volume.pixels.shape[0] == 2 and volume.hounsfield


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "empty.dcm", "empty"),
    (lambda d: d, "no DICOM images"),
])
def test_unreadable_inputs(tmp_path, make, message):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageError, match=message):
        read_dicom(make(tmp_path))
