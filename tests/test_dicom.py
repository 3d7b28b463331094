"""DICOM reading checked against pydicom's own modality and VOI LUT output."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from conftest import peak_memory, write_ct_series
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


# --- issue 15 item 3: enhanced (multi-frame) CT keeps its rescale in the functional groups ----------

def _group_item(ds, frame: int, sequence: str):
    """pydicom's Dataset holding ``sequence`` for ``frame``: per-frame group, else shared (PS3.3 C.7.6.16)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and sequence in per_frame[frame]:
        return per_frame[frame][sequence][0]
    return ds.SharedFunctionalGroupsSequence[0][sequence][0]


def _pydicom_hu(ds, raw: np.ndarray) -> np.ndarray:
    """pydicom's modality LUT per frame. pydicom 3.0 reads Rescale* from the top level only, so each
    frame's PixelValueTransformationSequence item (itself a Dataset) is what it is given."""
    return np.stack([apply_modality_lut(raw[i], _group_item(ds, i, "PixelValueTransformationSequence"))
                     for i in range(len(raw))])


def test_enhanced_ct_rescale_window_and_spacing_come_from_the_functional_groups():
    """eCT_Supplemental.dcm has no top-level RescaleIntercept: its -1024 is in the shared functional
    groups, and was ignored (every value 1024 HU too high)."""
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    assert "RescaleIntercept" not in ds and "WindowCenter" not in ds
    volume = read_dicom(path)
    expected = _pydicom_hu(ds, ds.pixel_array)
    np.testing.assert_array_equal(volume.pixels, expected)
    assert volume.pixels.min() == int(ds.pixel_array.min()) - 1024 == -1024  # outside the field of view
    assert volume.hounsfield and volume.window == (49.0, 102.0)  # FrameVOILUTSequence
    assert volume.spacing_mm == (0.388672, 0.388672)  # PixelMeasuresSequence
    from lsms_core.image_io import read_slice

    for frame in range(2):
        np.testing.assert_array_equal(read_slice(path, frame=frame).pixels, expected[frame])


def test_per_frame_groups_come_before_shared_before_top_level(tmp_path):
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = 1, 5000  # top level: must lose to the functional groups
    ds.WindowCenter, ds.WindowWidth = 1000, 10
    own = Dataset()
    own.RescaleSlope, own.RescaleIntercept, own.RescaleType = 2, -2048, "HU"
    ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence = [own]
    window = Dataset()
    window.WindowCenter, window.WindowWidth = 300, 1500
    ds.PerFrameFunctionalGroupsSequence[0].FrameVOILUTSequence = [window]
    path = tmp_path / "per-frame.dcm"
    ds.save_as(path)
    ds = pydicom.dcmread(path)
    volume = read_dicom(path)
    raw = ds.pixel_array
    np.testing.assert_array_equal(volume.pixels, _pydicom_hu(ds, raw))
    np.testing.assert_array_equal(volume.pixels[0], raw[0].astype(np.float64) - 1024)  # shared
    np.testing.assert_array_equal(volume.pixels[1], raw[1] * 2.0 - 2048)  # its own
    assert volume.window == (300.0, 1500.0)  # frame 0's own window


def test_top_level_rescale_still_applies_without_functional_groups(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1000
    path = tmp_path / "top.dcm"
    ds.save_as(path)
    np.testing.assert_array_equal(read_dicom(path).pixels, ds.pixel_array.astype(np.float64) - 1000)


# --- issue 15 item 5: memory bombs are refused from the header, before anything is inflated or decoded --------

def _deflated_ct(path, rows: int, columns: int, frames: int = 1, padding: int = 0):
    """A real Deflated Explicit VR Little Endian CT file (pydicom's CT_small header) whose pixel data are
    ``frames`` frames of ``rows`` x ``columns`` zeros, plus ``padding`` zero bytes of DataSetTrailingPadding
    after them: ~1 KB on disk per MB of pixel data. Each frame is deflated once and repeated (after a full
    flush a deflate stream does not look back), so even a 1 GB bomb takes milliseconds to build."""
    import io
    import struct
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # 16-bit signed CT with a rescale
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    frame_bytes = rows * columns * 2
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)

    def repeated(size: int, times: int) -> list[bytes]:
        first = deflate.compress(bytes(size)) + deflate.flush(zlib.Z_FULL_FLUSH)
        if times == 1:
            return [first]
        again = deflate.compress(bytes(size)) + deflate.flush(zlib.Z_FULL_FLUSH)
        assert again == first  # nothing carried over the flush: the same bytes inflate the same again
        return [first] + [again] * (times - 1)

    parts = [deflate.compress(body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", frame_bytes * frames))
                           + deflate.flush(zlib.Z_FULL_FLUSH)]
    parts += repeated(frame_bytes, frames)
    if padding:
        parts.append(deflate.compress(b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<I", padding))
                     + deflate.flush(zlib.Z_FULL_FLUSH))
        parts += repeated(1 << 20, padding >> 20)
    parts.append(deflate.flush())
    head = io.BytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    path.write_bytes(head.getvalue() + b"".join(parts))
    return path


def _refused(path, match: str, **kwargs) -> int:
    from lsms_core.image_io import read_slice

    def call():
        with pytest.raises(ImageError, match=match) as caught:
            read_slice(path, **kwargs)
        assert str(path) in str(caught.value)

    return peak_memory(call)


def test_deflated_multiframe_bomb_says_choose_a_frame_from_its_header(tmp_path):
    """Issue 15: a 780 KB deflated DICOM of 1600 frames of 500x500 (800 MB of pixel data, 400 M pixels: inside
    the whole-file limit) took 7.2 GB, inflated and decoded whole, only to say "choose --frame"."""
    path = _deflated_ct(tmp_path / "bomb.dcm", 500, 500, frames=1600)
    assert path.stat().st_size < 1_000_000
    peak = _refused(path, r"holds 1600 slices of \(500, 500\); choose one \(--frame 0..1599\)")
    assert peak < 20_000_000, f"{peak:,} bytes allocated to refuse it"
    peak = _refused(path, "frame 1600 out of range 0..1599", frame=1600)
    assert peak < 20_000_000, f"{peak:,} bytes allocated to refuse it"


def test_deflated_huge_slice_is_refused_from_its_header(tmp_path):
    """Issue 15: a 440 KB deflated 15000x15000 DICOM (225 M pixels: under the whole-file limit, over the per-slice
    one, which was checked only after decoding) took 4.2 GB. Now the header says no, for the napari reader too."""
    path = _deflated_ct(tmp_path / "bomb.dcm", 15000, 15000)
    assert path.stat().st_size < 1_000_000
    peak = _refused(path, "15000x15000, 225,000,000 pixels per slice; this reader accepts at most 100,000,000")
    assert peak < 20_000_000, f"{peak:,} bytes allocated to refuse it"

    def napari_reader():
        with pytest.raises(ImageError, match="225,000,000 pixels per slice"):
            read_dicom(path)

    assert peak_memory(napari_reader) < 20_000_000


def test_deflated_data_larger_than_the_header_promises_is_refused(tmp_path):
    """A small image whose deflated stream goes on inflating (here 1 GB of trailing padding): refused once the
    inflated data passes what the header's image needs, never held whole."""
    path = _deflated_ct(tmp_path / "padded.dcm", 64, 64, padding=1 << 30)
    assert path.stat().st_size < 2_000_000
    peak = _refused(path, "inflates to more than")
    assert peak < 100_000_000, f"{peak:,} bytes allocated to refuse it"


def test_small_deflated_files_still_read_one_frame_or_all(tmp_path):
    """The positive control of the bomb builder: a small deflated file of the same make is read, frame by
    frame as pydicom reads it, and whole by the napari reader."""
    from lsms_core.image_io import read_slice

    path = _deflated_ct(tmp_path / "small.dcm", 40, 30, frames=3)
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    assert read_dicom(path).pixels.shape == (3, 40, 30)
    np.testing.assert_array_equal(read_dicom(path).pixels, expected)
    for frame in range(3):
        np.testing.assert_array_equal(read_slice(path, frame=frame).pixels, expected[frame])
    one = _deflated_ct(tmp_path / "one.dcm", 40, 30)
    assert read_slice(one).shape == (40, 30) and read_slice(one).hounsfield


def test_a_frame_read_alone_equals_that_frame_of_the_whole_file(tmp_path):
    """read_slice decodes only the chosen frame; MONOCHROME1 is still mirrored about the whole file's range,
    so the frame equals the same frame of the napari reader's stack."""
    from lsms_core.image_io import read_slice

    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # 10 frames of 64x64 MR
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    stack = read_dicom(path).pixels
    for frame in (0, 4, 9):
        np.testing.assert_array_equal(read_slice(path, frame=frame).pixels, stack[frame])


def test_one_read_dicom(tmp_path):
    """Issue 15: image_io and dicom each had a read_dicom, returning different things with different
    checks. Now dicom.read_dicom is the one reader; read_slice's DICOM path is its first slice."""
    import lsms_core.image_io as image_io
    from lsms_core.dicom import read_dicom_slice
    from lsms_core.image_io import read_slice

    assert not hasattr(image_io, "read_dicom")
    for name in ("693_UNCI.dcm", "RG1_UNCI.dcm"):
        path = get_testdata_file(name)
        whole, one = read_dicom(path).slice(0), read_slice(path)
        np.testing.assert_array_equal(whole.pixels, one.pixels)
        assert (whole.hounsfield, whole.modality, whole.spacing_mm, whole.window, whole.sop_instance_uid,
                whole.patient_key) == (one.hounsfield, one.modality, one.spacing_mm, one.window,
                                       one.sop_instance_uid, one.patient_key)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    for bad, message in ((tmp_path / "missing.dcm", "no such file"), (empty, "empty")):
        for read in (read_dicom, read_dicom_slice):
            with pytest.raises(ImageError, match=message):
                read(bad)
