"""Reading real DICOM (pydicom's own test data), images and arrays into physical units."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from lsms_core.image_io import read_slice
from lsms_core.preprocessing import ImageError


def test_ct_dicom_is_read_in_hounsfield_units():
    path = get_testdata_file("693_UNCI.dcm")
    ds = pydicom.dcmread(path)
    image = read_slice(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image.pixels, expected)
    assert image.hounsfield and image.modality == "CT"
    assert image.shape == (512, 512)
    assert image.spacing_mm == tuple(float(v) for v in ds.PixelSpacing)


def test_monochrome1_radiograph_is_inverted():
    path = get_testdata_file("RG1_UNCI.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    image = read_slice(path)
    assert not image.hounsfield and image.modality == "CR"
    np.testing.assert_allclose(image.pixels, raw.max() + raw.min() - raw)


def test_png_and_npy(tmp_path):
    grey = (np.arange(64 * 48) % 256).reshape(64, 48).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "slice.png")
    png = read_slice(tmp_path / "slice.png")
    assert png.shape == (64, 48) and not png.hounsfield
    np.testing.assert_array_equal(png.pixels, grey)
    hu = np.full((20, 20), -1000.0, np.float32)
    hu[5:15, 5:15] = 60
    np.save(tmp_path / "ct.npy", hu)
    assert read_slice(tmp_path / "ct.npy").hounsfield
    np.save(tmp_path / "stack.npy", np.stack([hu, hu]))
    with pytest.raises(ImageError, match="--frame"):
        read_slice(tmp_path / "stack.npy")
    assert read_slice(tmp_path / "stack.npy", frame=1).shape == (20, 20)


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"this is not dicom at all" * 10, "not a readable DICOM"),
])
def test_bad_dicom_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        read_slice(path)


def test_dicom_without_pixels_is_refused():
    with pytest.raises(ImageError, match="no pixel data"):
        read_slice(get_testdata_file("rtplan.dcm"))


def test_rgb_dicom_and_png_become_grey(tmp_path):
    image = read_slice(get_testdata_file("SC_rgb.dcm"))
    assert image.shape == (100, 100) and not image.hounsfield
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "green.png")
    np.testing.assert_allclose(read_slice(tmp_path / "green.png").pixels, 0.587 * 200, rtol=1e-6)
