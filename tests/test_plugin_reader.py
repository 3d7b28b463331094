"""The napari side of reading: manifest, DICOM reader, sample data, in a real viewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from lsms_core.preprocessing import ImageError
from lsms_napari._reader import napari_get_reader


def test_manifest_is_valid_and_names_the_widget():
    npe2 = Path(sys.executable).parent / "npe2"
    done = subprocess.run([str(npe2), "validate", "lsms-napari"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("lsms-napari")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Referring Lesion Segment"]
    assert {s.key for s in manifest.contributions.sample_data} == {"reflits", "lits-volume", "dicom-ct",
                                                                   "chest-radiograph", "abdominal-mr",
                                                                   "qata-radiograph", "lung-ct"}


def test_reader_gives_hu_spacing_and_window_for_ct(make_napari_viewer):
    viewer = make_napari_viewer()
    path = get_testdata_file("693_UNCI.dcm")
    ds = pydicom.dcmread(path)
    [layer] = viewer.open(path, plugin="lsms-napari")
    np.testing.assert_array_equal(layer.data, apply_modality_lut(ds.pixel_array, ds))
    np.testing.assert_allclose(layer.scale, [float(v) for v in ds.PixelSpacing])
    assert tuple(layer.contrast_limits) == (-10.0, 90.0)  # WindowCenter 40, WindowWidth 100
    assert layer.metadata["lsms"]["hounsfield"] is True
    assert str(ds.PatientID) not in repr(layer.metadata)  # only a pseudonymous key


def test_reader_inverts_monochrome1(make_napari_viewer):
    viewer = make_napari_viewer()
    path = get_testdata_file("RG1_UNCI.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    [layer] = viewer.open(path, plugin="lsms-napari")
    np.testing.assert_array_equal(layer.data, raw.max() + raw.min() - raw)
    low, high = layer.contrast_limits
    assert (low + high) / 2 == pytest.approx(raw.max() + raw.min() - 15000)  # the window, mirrored


def test_reader_opens_a_series_folder_as_a_stack(make_napari_viewer, ct_series):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(ct_series), plugin="lsms-napari")
    assert layer.data.shape == (3, 512, 512)
    np.testing.assert_allclose(layer.scale, [3.0, 0.478516, 0.478516])


def test_reader_declines_other_files_and_explains_bad_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    fake = tmp_path / "scan.dcm"
    fake.write_bytes(b"not a dicom file" * 20)
    reader = napari_get_reader(str(fake))
    with pytest.raises(ImageError, match="not a readable DICOM"):
        reader(str(fake))


@pytest.mark.parametrize("key,shape,hounsfield", [("reflits", (128, 128), True), ("dicom-ct", (512, 512), True),
                                                  ("chest-radiograph", (1955, 1841), False),
                                                  ("qata-radiograph", (224, 224), False), ("lung-ct", (359, 373), False)])
def test_samples_open(make_napari_viewer, key, shape, hounsfield, lits):
    viewer = make_napari_viewer()
    [layer] = viewer.open_sample("lsms-napari", key)
    assert layer.data.shape == shape
    assert layer.metadata["lsms"]["hounsfield"] is hounsfield
    if key == "reflits":
        np.testing.assert_array_equal(layer.data, lits.hu[100])


def test_a_plain_wheel_ships_the_manifest(tmp_path):
    """napari finds the plugin after a non-editable install: the wheel holds napari.yaml and its entry point."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("lsms_napari-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        manifest = archive.read("lsms_napari/napari.yaml").decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert manifest == (root / "napari.yaml").read_text()
    assert "[napari.manifest]" in entry_points and "lsms_napari:napari.yaml" in entry_points
    assert "lsms_core/weights/lsms-reflits.safetensors" in names  # the default model travels with it
