"""A corpus of bad inputs, built from real files, each with the behaviour it must get.

Every bad file gets one documented error (ImageError for images, CheckpointError for
checkpoints, ExpressionError for text, a validator Problem for datasets) whose message names
the file and the problem; never a traceback from inside pydicom, Pillow, NumPy or safetensors.
Cases already covered elsewhere are listed in /work/notes (reliability table), not repeated:
zero-byte and non-DICOM ``.dcm`` (test_image_io, test_dicom, test_plugin_reader), RT plan
without pixels and RGB DICOM (test_image_io), multi-frame stacks (test_dicom), .npy stacks
(test_image_io), NaN/inf arrays (test_preprocessing), config mismatch, half-truncated and
``torch.save`` pickle checkpoints (test_checkpoint), empty text and Chinese text
(test_inference, test_cli), and the validator's broken line / missing mask / wrong-size
mask / duplicate id (test_dataset).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from lsms_core.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from lsms_core.cli.segment import main as segment_main
from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.validate import validate_dataset
from lsms_core.dicom import read_dicom
from lsms_core.image_io import read_slice
from lsms_core.inference import MAX_EXPRESSION_CHARS, ExpressionError, Segmenter, clean_expression
from lsms_core.model import build_model
from lsms_core.preprocessing import ImageError
from lsms_napari._reader import napari_get_reader, read_dicom_layers

CT = "CT_small.dcm"  # pydicom's 128x128 CT slice, explicit VR little endian, uncompressed


def _copy(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _edited_dicom(path: Path, name: str = CT, **changes) -> Path:
    """A real DICOM file with header fields changed (None deletes the field)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory, tiny_config, text_encoder) -> Segmenter:
    """A warm tiny model (random weights): these tests check behaviour, not accuracy."""
    torch.manual_seed(0)
    config = tiny_config.replace(text=text_encoder.config)
    path = save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", build_model(config.model).eval(),
                           config, extra={"name": "tiny-test"})
    return Segmenter(path, device="cpu")


# --- DICOM --------------------------------------------------------------------------------

CT_BYTES = Path(get_testdata_file(CT)).read_bytes()
PIXEL_TAG = CT_BYTES.rfind(b"\xe0\x7f\x10\x00")


@pytest.mark.parametrize("cut,message", [
    (132, "ends right after its file header"),  # preamble and DICM only
    (500, "truncated: it ends inside SOPInstanceUID"),
    (PIXEL_TAG + 12 + 1000, "truncated: it ends inside PixelData (7FE0,0010) (1000 of 32768 bytes)"),
    (len(CT_BYTES) - 1, "truncated: it ends inside DataSetTrailingPadding"),
])
def test_truncated_dicom_says_truncated(tmp_path, cut, message):
    path = _copy(tmp_path / "cut.dcm", CT_BYTES[:cut])
    for read in (read_slice, read_dicom, read_dicom_layers):
        with pytest.raises(ImageError, match="truncated") as caught:
            read(path)
        assert str(path) in str(caught.value) and message in str(caught.value)


def test_truncated_compressed_dicom_says_truncated(tmp_path):
    data = Path(get_testdata_file("bad_sequence.dcm")).read_bytes()  # JPEG Lossless, encapsulated pixel data
    path = _copy(tmp_path / "cut.dcm", data[:len(data) - 5000])
    with pytest.raises(ImageError, match="truncated") as caught:
        read_slice(path)
    assert str(path) in str(caught.value)


def test_image_without_pixel_data_says_so(tmp_path):
    path = _edited_dicom(tmp_path / "nopixels.dcm", PixelData=None)
    with pytest.raises(ImageError, match=r"this DICOM image \(CT Image Storage\) has no pixel data.*truncated"):
        read_slice(path)


def test_png_renamed_dcm_is_not_dicom(tmp_path):
    import skimage

    png = (Path(skimage.__file__).parent / "data" / "text.png").read_bytes()
    path = _copy(tmp_path / "scan.dcm", png)
    with pytest.raises(ImageError, match="not a readable DICOM file .*'DICM' marker"):
        read_slice(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # bad_sequence.dcm's own invalid UID value
@pytest.mark.parametrize("name,shape", [("bad_sequence.dcm", (512, 512)), ("JPEG-LL.dcm", (1024, 256))])
def test_jpeg_lossless_dicom_is_decoded(name, shape):
    """pydicom-data's JPEG Lossless files decode with pylibjpeg (a project dependency) into HU."""
    path = get_testdata_file(name)
    image = read_slice(path)
    assert image.shape == shape and np.isfinite(image.pixels).all()
    ds = pydicom.dcmread(path)
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.hounsfield is (ds.Modality == "CT")


def test_missing_decoder_names_what_to_install(monkeypatch):
    from pydicom.pixels.decoders import JPEGLosslessSV1Decoder

    monkeypatch.setattr(JPEGLosslessSV1Decoder, "_available", {})  # as on a machine without pylibjpeg
    with pytest.raises(ImageError, match="no decoder for this compression is installed: pip install pylibjpeg "
                                         "pylibjpeg-libjpeg") as caught:
        read_slice(get_testdata_file("bad_sequence.dcm"))
    assert "JPEG Lossless" in str(caught.value) and "\n" not in str(caught.value)


def test_damaged_jpeg_dicom_says_damaged():
    """pydicom's JPEG-lossy.dcm has a misplaced JPEG marker: no installed decoder reads it."""
    with pytest.raises(ImageError, match="cannot decode the pixel data .*JPEG Extended.* damaged") as caught:
        read_slice(get_testdata_file("JPEG-lossy.dcm"))
    assert "\n" not in str(caught.value)


def test_compressed_rgb_dicom_becomes_grey():
    image = read_slice(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert image.shape == (100, 100) and not image.hounsfield


def test_multiframe_dicom_is_a_stack_or_one_chosen_frame():
    path = get_testdata_file("emri_small.dcm")  # 10 frames of 64x64 MR
    with pytest.raises(ImageError, match=r"holds 10 slices of \(64, 64\); choose one \(--frame 0..9\)"):
        read_slice(path)
    with pytest.raises(ImageError, match="frame 10 out of range 0..9"):
        read_slice(path, frame=10)
    assert read_slice(path, frame=9).shape == (64, 64)
    [(data, _, kind)] = read_dicom_layers(path)
    assert data.shape == (10, 64, 64) and kind == "image"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values, as it should
@pytest.mark.parametrize("changes,message,frame", [
    ({"Rows": 30000, "Columns": 30000}, "900,000,000 pixels per slice; this reader accepts at most 100,000,000",
     None),  # refused from the header, before decoding
    ({"Rows": 0}, "the image has 0 pixels", None),
    ({"WindowCenter": "nan", "WindowWidth": "inf", "PixelSpacing": ["inf", "0"]}, None, None),  # ignored, not used
    ({"NumberOfFrames": 7}, r"holds 7 slices of \(128, 128\); choose one", None),  # from the header: nothing decoded
    ({"NumberOfFrames": 7}, "cannot decode the pixel data .* holds 32,768 bytes but the header's 7 frames need "
                            "229,376", 0),  # 7 frames promised, one present: one frame alone is not read
    ({"NumberOfFrames": "x"}, "image size .* is missing or not a number", None),  # not a number at all
])
def test_nonsense_header_values(tmp_path, changes, message, frame):
    if changes.get("NumberOfFrames") == "x":  # pydicom refuses to write that: edit the bytes
        path = _edited_dicom(tmp_path / "odd.dcm", NumberOfFrames=9)
        path.write_bytes(path.read_bytes().replace(b"IS\x02\x009 ", b"IS\x02\x00x ", 1))
    else:
        path = _edited_dicom(tmp_path / "odd.dcm", **changes)
    if message is None:
        image = read_slice(path)
        assert image.window is None and image.spacing_mm is None
        return
    with pytest.raises(ImageError, match=message) as caught:
        read_slice(path, frame=frame)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("case", ["zero-bytes", "truncated", "not-dicom", "no-pixels", "damaged-jpeg",
                                  "missing", "folder-without-dicom"])
def test_napari_reader_only_raises_image_error(tmp_path, case):
    """The napari reader function, called without a viewer: ImageError naming the file (napari shows it)."""
    path = tmp_path / "scan.dcm"
    if case == "zero-bytes":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(CT_BYTES[:2000])
    elif case == "not-dicom":
        path.write_bytes(b"%PDF-1.4 not an image\n" * 20)
    elif case == "no-pixels":
        path = Path(get_testdata_file("rtplan.dcm"))
    elif case == "damaged-jpeg":
        path = Path(get_testdata_file("JPEG-lossy.dcm"))
    elif case == "folder-without-dicom":
        path = tmp_path / "folder"
        path.mkdir()
        (path / "notes.dcm").write_text("not dicom either")
    reader = napari_get_reader(str(path))
    assert reader is not None
    with pytest.raises(ImageError) as caught:
        reader(str(path))
    assert str(path) in str(caught.value)


def test_napari_get_reader_never_raises(tmp_path):
    assert napari_get_reader(str(tmp_path / "missing-folder" / "x.txt")) is None
    assert napari_get_reader([str(tmp_path), str(tmp_path)]) is None
    assert napari_get_reader("\0bad") is None


# --- plain images and arrays ------------------------------------------------------------------

def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG whose IHDR says ``width`` x ``height`` (CRC fixed): a decompression bomb's header."""
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("width,height,message", [
    (12000, 9000, "108,000,000 pixels per slice; this reader accepts at most 100,000,000"),  # our limit
    (20000, 20000, "too large to open"),  # Pillow's decompression-bomb limit
])
def test_huge_images_are_refused_before_decoding(tmp_path, width, height, message):
    path = _png_claiming(tmp_path / "huge.png", width, height)
    with pytest.raises(ImageError, match=message) as caught:
        read_slice(path)
    assert str(path) in str(caught.value)


def test_huge_npy_is_refused_before_loading(tmp_path):
    path = tmp_path / "huge.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = (10001, 10000)
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.truncate(handle.tell() + 10001 * 10000 * 4)  # sparse: takes no disk space
    with pytest.raises(ImageError, match="at most 100,000,000"):
        read_slice(path)


def _sparse_npy(path: Path, shape: tuple[int, ...], dtype=np.float32) -> Path:
    """A .npy of ``shape`` whose data is a hole in the file: any size, no disk space."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), dtype))
    header["shape"] = shape
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.truncate(handle.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return path


@pytest.mark.parametrize("shape", [(20000, 20000, 1), (1, 20000, 20000), (20000, 20000, 3)])
def test_npy_with_an_axis_of_one_is_counted_whole(tmp_path, shape):
    """Issue 15: (20000, 20000, 1) passed the 100 M pixel guard (the trailing 1 was taken for the width, so it
    counted 20,000 pixels) and was read and segmented at 5.6 GB. Refused from the header, nothing loaded."""
    from conftest import peak_memory

    path = _sparse_npy(tmp_path / "tall.npy", shape)

    def read():
        with pytest.raises(ImageError, match="400,000,000 pixels per slice; this reader accepts at most 100,000,000"):
            read_slice(path)

    assert peak_memory(read) < 5_000_000


def _png_bomb(path: Path, width: int, height: int) -> Path:
    """A real 8-bit grey PNG of ``width`` x ``height`` zeros, zlib-deflated: ~1 KB on disk per MB of pixels."""
    deflate = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte + pixels
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_png_strip_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    """Issue 15: an 87 KB PNG of 1x90,000,000 pixels (under the 100 M pixel limit, just over Pillow's warning
    threshold, which the reader silenced) took 3.4 GB: decoded, then resized through an antialiasing kernel
    350,000 taps wide. A side over 20,000 pixels is refused from the header, and nothing is decoded."""
    from PIL import ImageFile

    path = _png_bomb(tmp_path / "strip.png", 90_000_000, 1)
    assert path.stat().st_size < 200_000
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    with pytest.raises(ImageError, match="a side of 90,000,000 pixels; this reader accepts at most 20,000") as caught:
        read_slice(path)
    assert str(path) in str(caught.value) and decoded == []
    small = _png_bomb(tmp_path / "ok.png", 300, 20)  # the builder's positive control: a real PNG, read
    assert read_slice(small).shape == (20, 300) and decoded


def _zlib_tiff_stack(path: Path, pages: int, height: int, width: int) -> Path:
    import tifffile

    page = np.zeros((height, width), np.uint8)
    tifffile.imwrite(path, (page for _ in range(pages)), shape=(pages, height, width), dtype=np.uint8,
                     compression="zlib", photometric="minisblack")  # one series, written a page at a time
    return path


def test_zlib_tiff_stack_is_refused_or_read_one_page_from_its_header(tmp_path, monkeypatch):
    """Issue 15: a 3 MB zlib TIFF took 3.8 GB. The way there found here: every page of a stack was decoded
    before the reader asked which slice was meant. Now the number of slices comes from the header, and only
    the chosen page is decoded."""
    import tifffile

    path = _zlib_tiff_stack(tmp_path / "stack.tif", 40, 2000, 2000)  # 160 MB of pixels
    assert path.stat().st_size < 2_000_000
    decoded = []
    real = tifffile.TiffPage.asarray
    monkeypatch.setattr(tifffile.TiffPage, "asarray",
                        lambda self, *a, **k: decoded.append(self.index) or real(self, *a, **k))
    with pytest.raises(ImageError, match=r"TIFF stack holds 40 slices of \(2000, 2000\); choose one \(--frame 0..39\)"):
        read_slice(path)
    with pytest.raises(ImageError, match="frame 40 out of range 0..39"):
        read_slice(path, frame=40)
    assert decoded == []
    assert read_slice(path, frame=7).shape == (2000, 2000)
    assert decoded == [7]


@pytest.mark.parametrize("values,message", [
    ([[0.0, np.nan], [1.0, 2.0]], "the image has 1 NaN or infinite pixels: replace them"),
    ([[0.0, np.inf], [-np.inf, 2.0]], "the image has 2 NaN or infinite pixels"),
])
def test_nan_and_inf_npy_are_refused_naming_the_file(tmp_path, values, message):
    """Documented policy: refused, never silently replaced (a NaN in HU has no honest value)."""
    path = tmp_path / "bad.npy"
    np.save(path, np.array(values, np.float32))
    with pytest.raises(ImageError, match=message) as caught:
        read_slice(path)
    assert str(caught.value).startswith(str(path))


@pytest.mark.parametrize("values,message", [
    ([[0.0, 1e300], [1.0, 2.0]], r"the image has 1 pixel with a finite value far beyond any image's range \(up to "
                                 r"1e\+300 in magnitude; 32-bit floats hold at most 3.4e\+38\): the array is damaged "
                                 "or wrongly scaled"),
    ([[-1e39, 1e300], [np.nan, 2.0]], "2 pixels with finite values far beyond .*up to 1e\\+300.*; 1 more are NaN"),
])
def test_finite_values_too_large_for_float32_are_not_called_nan(tmp_path, segmenter, values, message):
    """Issue 15: a float64 .npy holding 1e300 was refused as "NaN or infinite", which it is not."""
    path = tmp_path / "huge-values.npy"
    np.save(path, np.array(values, np.float64))
    with pytest.raises(ImageError, match=message) as caught:
        read_slice(path)
    assert "NaN or infinite pixels: replace them" not in str(caught.value)
    with pytest.raises(ImageError, match=message):
        segmenter.segment(np.array(values, np.float64), "a lesion", hounsfield=True)


def test_a_rescale_beyond_float32_is_named_in_a_dicom(tmp_path):
    path = _edited_dicom(tmp_path / "slope.dcm", RescaleSlope="1e300")
    with pytest.raises(ImageError, match=r"slope.dcm: after the modality LUT \(rescale slope and intercept\) the "
                                         "image has .* pixels with finite values far beyond any image's range"):
        read_slice(path)


@pytest.mark.parametrize("content,message", [
    (pickle.dumps({"pixels": [1, 2]}), "no NumPy header"),
    (b"PK\x03\x04" + b"\x00" * 60, "an .npz archive"),
])
def test_non_npy_content_is_refused_without_unpickling(tmp_path, content, message):
    path = _copy(tmp_path / "x.npy", content)
    with pytest.raises(ImageError, match=message):
        read_slice(path)


def test_object_npy_is_never_unpickled(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[_Payload()]], dtype=object), allow_pickle=True)
    _Payload.marker = tmp_path / "pwned"
    with pytest.raises(ImageError, match="Python objects"):
        read_slice(path)
    assert not _Payload.marker.exists()


def test_stack_where_a_slice_is_expected(tmp_path, segmenter):
    stack = np.zeros((3, 32, 32), np.float32)
    with pytest.raises(ImageError, match="pick one slice of a stack"):
        segmenter.segment(stack, "a lesion", hounsfield=True)
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", stack.astype(np.uint16))
    with pytest.raises(ImageError, match=r"TIFF stack holds 3 slices .*--frame 0..2"):
        read_slice(tmp_path / "stack.tif")
    assert read_slice(tmp_path / "stack.tif", frame=2).shape == (32, 32)
    np.save(tmp_path / "one.npy", stack[:1])  # a stack of one is that slice
    assert read_slice(tmp_path / "one.npy").shape == (32, 32)


def test_damaged_tiff_is_an_image_error(tmp_path):
    path = _copy(tmp_path / "x.tif", b"II*\x00" + b"\xff" * 40)
    with pytest.raises(ImageError, match="not a readable TIFF") as caught:
        read_slice(path)
    assert str(path) in str(caught.value)


def test_one_pixel_images_work(tmp_path, segmenter):
    Image.fromarray(np.array([[200]], np.uint8)).save(tmp_path / "one.png")
    png = read_slice(tmp_path / "one.png")
    assert png.shape == (1, 1)
    assert segmenter.segment(png, "a lesion").mask.shape == (1, 1)
    dicom = _edited_dicom(tmp_path / "one.dcm", Rows=1, Columns=1, PixelData=b"\x10\x00")
    image = read_slice(dicom)
    assert image.shape == (1, 1) and image.hounsfield
    assert segmenter.segment(image, "a lesion").mask.shape == (1, 1)


_LARGE_IMAGE_SCRIPT = """
import json, sys, time
import psutil
from lsms_core.image_io import read_slice
from lsms_core.inference import Segmenter
segmenter = Segmenter(sys.argv[1], device="cpu")
segmenter.segment(read_slice(sys.argv[3]), "the largest lesion")  # warm, on a small slice
before = psutil.Process().memory_info().rss
start = time.perf_counter()
image = read_slice(sys.argv[2])
result = segmenter.segment(image, "the largest lesion")
# VmHWM, not ru_maxrss: after fork+exec Linux carries the parent's peak into ru_maxrss, so a large
# pytest process (napari loaded) would be counted as this child's peak.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
print(json.dumps({"shape": list(result.mask.shape), "seconds": time.perf_counter() - start,
                  "peak_extra_mb": (peak - before) / 2**20, "finite": bool((result.probability >= 0).all())}))
"""


def test_8000x8000_image_is_downsampled_in_bounded_memory(tmp_path, segmenter):
    """Read, segment (downsampled into the model's input) and return a full-size mask: the extra peak
    memory stays a few times the 256 MB float32 slice (measured in a fresh process)."""
    ct = pydicom.dcmread(get_testdata_file(CT)).pixel_array.astype(np.float32)
    big = np.repeat(np.repeat(ct, 63, axis=0), 63, axis=1)[:8000, :8000]  # a real CT slice, enlarged
    grey = np.clip((big - big.min()) / (big.max() - big.min()) * 255, 0, 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "big.png", compress_level=1)
    Image.fromarray(grey[:64, :64]).save(tmp_path / "small.png")
    done = subprocess.run([sys.executable, "-c", _LARGE_IMAGE_SCRIPT, str(segmenter.checkpoint.path),
                           str(tmp_path / "big.png"), str(tmp_path / "small.png")],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print("8000x8000:", report)
    assert report["shape"] == [8000, 8000] and report["finite"]
    assert report["peak_extra_mb"] < 2500, report


# --- expressions ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["\u200b\u200b", "\x00\x01\x02", "\t\u3000\n"])
def test_invisible_expressions_are_empty(text):
    with pytest.raises(ExpressionError, match="the expression is empty"):
        clean_expression(text)


def test_5000_character_expression_is_cut_and_works(segmenter, text_encoder):
    text = ("the largest hypodense lesion in the upper left part of the liver near the dome " * 70)[:5000]
    cleaned = clean_expression(text)
    assert len(cleaned) <= MAX_EXPRESSION_CHARS and text.startswith(cleaned) and not cleaned.endswith(" ")
    ids, _ = text_encoder.tokenize([cleaned])
    assert ids.shape[1] == text_encoder.config.max_tokens  # the encoder reads its first max_tokens tokens
    ct = read_slice(get_testdata_file(CT))
    result = segmenter.segment(ct, text)
    assert result.mask.shape == (128, 128) and result.text == cleaned
    assert clean_expression("x" * 5000) == "x" * MAX_EXPRESSION_CHARS  # one endless word is cut too


def test_a_200_mb_expression_is_refused_before_it_is_read(segmenter):
    """Issue 15: a 200 MB expression through the API took 45 s and 2.6 GB before it was cut. The length is
    checked first: here 20 MB, refused in microseconds, nothing allocated; 100,000 characters are still cut."""
    import time

    from conftest import peak_memory

    from lsms_core.expressions import MAX_EXPRESSION_INPUT_CHARS

    ct = read_slice(get_testdata_file(CT))
    text = "the largest lesion " * 1_100_000  # 20.9 M characters
    for call in (lambda: clean_expression(text), lambda: segmenter.encode_text(text),
                 lambda: segmenter.segment(ct, text)):
        start = time.perf_counter()

        def refused():
            with pytest.raises(ExpressionError, match="the expression is 20,900,000 characters long; at most "
                                                      "100,000 are accepted"):
                call()

        assert peak_memory(refused) < 1_000_000
        assert time.perf_counter() - start < 0.5
    assert len(clean_expression(text[:MAX_EXPRESSION_INPUT_CHARS])) <= MAX_EXPRESSION_CHARS  # at the limit: cut
    with pytest.raises(ExpressionError, match="100,001 characters long"):
        clean_expression(text[:MAX_EXPRESSION_INPUT_CHARS + 1])


@pytest.mark.parametrize("text", [
    "أكبر آفة ناقصة الكثافة في الفص الأيمن من الكبد",  # Arabic, right to left
    "самое большое гиподенсное образование в печени",  # Cyrillic
    "肝右叶 segment VI 最大的低密度病灶 (2.3 cm)",  # Chinese mixed with Latin and digits
    "the largest lesion 🫀 \u202eright lobe\u202c",  # emoji and a bidi override
    "the largest lesion \udcff\udcfe",  # undecodable command-line bytes (lone surrogates)
])
def test_non_latin_expressions_work(segmenter, text):
    ct = read_slice(get_testdata_file(CT))
    result = segmenter.segment(ct, text)
    assert result.mask.shape == (128, 128) and np.isfinite(result.probability).all()


# --- checkpoints ------------------------------------------------------------------------------

def test_checkpoint_of_another_preset_loads_with_its_own_config(tmp_path, tiny_config, text_encoder):
    from lsms_core.config import PreprocessConfig, preset

    config = tiny_config.replace(model=preset("lsms-budget"), preprocess=PreprocessConfig(image_size=64),
                                 preset="lsms-budget", text=text_encoder.config)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "budget.safetensors", build_model(config.model).eval(), config, half=True)
    other = Segmenter(path, device="cpu")
    assert other.checkpoint.config.preset == "lsms-budget" and other.checkpoint.config.model.fsd_stride == 8
    result = other.segment(read_slice(get_testdata_file(CT)), "the largest lesion")
    assert result.mask.shape == (128, 128)


@pytest.mark.parametrize("cut,message", [
    (0, r"is empty \(0 bytes\)"),
    (5, "truncated or damaged"),
    (8, "truncated or damaged"),
    ("header", "truncated or damaged"),
    (-1, "truncated or damaged"),
])
def test_truncated_checkpoint_at_any_point(tmp_path, segmenter, cut, message):
    data = segmenter.checkpoint.path.read_bytes()
    end = {"header": 8 + int.from_bytes(data[:8], "little") // 2}.get(cut, cut)
    path = _copy(tmp_path / "cut.safetensors", data[:end])
    with pytest.raises(CheckpointError, match=message) as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value)


def test_header_length_starting_with_the_pickle_byte_is_not_a_pickle(tmp_path, tiny_config):
    """A safetensors header whose length's first byte is 0x80 (pickle's protocol marker) still loads."""
    model = build_model(tiny_config.model).eval()
    for pad in range(0, 264, 8):
        path = save_checkpoint(tmp_path / "m.safetensors", model, tiny_config, extra={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    assert read_checkpoint(path).config.preset == tiny_config.preset


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    marker: Path | None = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol,name", [(0, "model.safetensors"), (2, "model.safetensors"), (4, "weights.bin"),
                                           (0, "model.pt")])
def test_pickle_payloads_are_never_run(tmp_path, protocol, name):
    """Raw pickles of any protocol, also renamed ``.safetensors``: refused, and the payload never runs."""
    _Payload.marker = tmp_path / "pwned"
    path = _copy(tmp_path / name, pickle.dumps({"state_dict": _Payload()}, protocol=protocol))
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    with pytest.raises(CheckpointError):
        Segmenter(path, device="cpu")
    assert not _Payload.marker.exists()


def test_damaged_checkpoint_metadata_is_a_checkpoint_error(tmp_path, segmenter):
    from safetensors.torch import load, save

    data = segmenter.checkpoint.path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    for config in ("[1, 2]", json.dumps({"model": {"depths": 3}}), json.dumps({"preprocess": {"image_size": "x"}})):
        path = _copy(tmp_path / "bad.safetensors", save(load(data), metadata={**header, "config": config}))
        with pytest.raises(CheckpointError, match="stored configuration is unusable"):
            read_checkpoint(path)


# --- datasets ---------------------------------------------------------------------------------

def _two_line_dataset(root: Path) -> AnnotationDataset:
    ct = pydicom.dcmread(get_testdata_file(CT)).pixel_array[:32, :32].astype(np.float32)
    dataset = AnnotationDataset.create(root)
    mask = np.zeros((32, 32), bool)
    mask[4:9, 4:9] = True
    for text, shift in (("the largest lesion", 0.0), ("a cyst", 3.0)):
        dataset.add(ct + shift, mask, text, split_group="p-1", modality="CT", units="HU", split="train")
    return dataset


@pytest.mark.parametrize("damage,message", [
    ("missing-image", "line 2: image file images/"),
    ("image-not-npy", "line 2: image file images/"),
    ("image-wrong-size", "line 2: image images/"),
    ("not-an-object", "line 2: not a JSON object"),
    ("id-is-a-list", "line 2: field 'id' must be str"),
    ("height-is-text", "line 2: field 'height' must be int"),
])
def test_validator_names_the_line_for_more_damage(tmp_path, damage, message):
    """Beyond test_dataset's cases (broken JSON, missing or wrong-size mask, duplicate id)."""
    root = tmp_path / "d"
    dataset = _two_line_dataset(root)
    second = dataset.records[1]
    manifest = root / "annotations.jsonl"
    lines = manifest.read_text().splitlines()
    record = json.loads(lines[1])
    if damage == "missing-image":
        (root / second["image"]).unlink()
    elif damage == "image-not-npy":
        (root / second["image"]).write_bytes(b"not numpy")
    elif damage == "image-wrong-size":
        np.save(root / second["image"], np.zeros((16, 32), np.int16))
    elif damage == "not-an-object":
        lines[1] = "[1, 2, 3]"
    elif damage == "id-is-a-list":
        record["id"] = ["a", "b"]
    elif damage == "height-is-text":
        record["height"] = "32"
    if damage in ("id-is-a-list", "height-is-text"):
        lines[1] = json.dumps(record)
    manifest.write_text("\n".join(lines) + "\n")
    errors = [str(p) for p in validate_dataset(root) if p.severity == "error"]
    assert any(message in e for e in errors), errors
    assert not any("line 1:" in e for e in errors), errors  # the good line is not blamed
    AnnotationDataset.open(root)  # opening (for training) still works: bad lines are set aside


# --- the lsms-segment command line ------------------------------------------------------------

@pytest.mark.parametrize("case,message", [
    ("truncated-dicom", "truncated"),
    ("not-dicom", "not a readable DICOM file"),
    ("nan-npy", "NaN or infinite"),
    ("stack-npy", "choose one (--frame 0..2)"),
    ("multiframe-dicom", "choose one (--frame 0..9)"),
    ("damaged-jpeg", "cannot decode the pixel data"),
    ("output-is-a-folder", "is a folder: name the mask file"),
    ("truncated-checkpoint", "truncated or damaged"),
])
def test_lsms_segment_bad_inputs_are_one_line(tmp_path, capsys, segmenter, case, message):
    image, checkpoint, output = tmp_path / "in.dcm", str(segmenter.checkpoint.path), tmp_path / "mask.png"
    if case == "truncated-dicom":
        image.write_bytes(CT_BYTES[:3000])
    elif case == "not-dicom":
        image.write_text("hello" * 100)
    elif case in ("nan-npy", "stack-npy"):
        image = tmp_path / "in.npy"
        np.save(image, np.full((2, 2), np.nan) if case == "nan-npy" else np.zeros((3, 8, 8)))
    elif case == "multiframe-dicom":
        image = Path(get_testdata_file("emri_small.dcm"))
    elif case == "damaged-jpeg":
        image = Path(get_testdata_file("JPEG-lossy.dcm"))
    elif case == "output-is-a-folder":
        image, output = Path(get_testdata_file(CT)), tmp_path
    else:
        image = Path(get_testdata_file(CT))
        checkpoint = str(_copy(tmp_path / "cut.safetensors", segmenter.checkpoint.path.read_bytes()[:5000]))
    code = segment_main([str(image), "--text", "the largest lesion", "--checkpoint", checkpoint, "--device", "cpu",
                         "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lsms-segment: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    if case != "output-is-a-folder":
        assert not output.exists()


def test_lsms_segment_console_script_on_a_truncated_dicom(tmp_path):
    image = _copy(tmp_path / "cut.dcm", CT_BYTES[:PIXEL_TAG + 12 + 1542])
    script = Path(sys.executable).parent / "lsms-segment"
    done = subprocess.run([str(script), str(image), "--text", "a lesion", "-o", str(tmp_path / "m.png")],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 2
    expected = (f"lsms-segment: error: {image}: the DICOM file is truncated: it ends inside PixelData (7FE0,0010) "
                "(1542 of 32768 bytes); copy it again from its source")
    assert done.stderr.splitlines() == [expected]
    assert not (tmp_path / "m.png").exists()



# --- issue 15 item 10 (the readers' and writers' part) ----------------------------------------------

@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"),
    ("folder", "is a folder, not an image file"),
    ("symlink-loop", "symbolic link loop"),
    ("dangling-symlink", "a symbolic link to a missing file"),
    ("fifo", "not a regular file but a FIFO"),
])
def test_read_slice_says_what_the_path_is(tmp_path, case, message):
    """A symlink loop or a folder said "no such file"."""
    path = tmp_path / "x.png"
    if case == "folder":
        path.mkdir()
    elif case == "symlink-loop":
        path.symlink_to(tmp_path / "y.png")
        (tmp_path / "y.png").symlink_to(path)
    elif case == "dangling-symlink":
        path.symlink_to(tmp_path / "gone.png")
    elif case == "fifo":
        os.mkfifo(path)
    with pytest.raises(ImageError, match=message) as caught:
        read_slice(path)
    assert str(path) in str(caught.value)
    if case in ("symlink-loop", "fifo", "dangling-symlink"):
        with pytest.raises(ImageError, match=message):
            read_dicom(path.with_suffix(".dcm") if path.with_suffix(".dcm").exists() else path)


def test_read_dicom_on_a_symlink_loop_says_so(tmp_path):
    path = tmp_path / "a.dcm"
    path.symlink_to(tmp_path / "b.dcm")
    (tmp_path / "b.dcm").symlink_to(path)
    with pytest.raises(ImageError, match="symbolic link loop"):
        read_dicom(path)


def test_one_bit_png_is_read_as_black_and_white(tmp_path):
    pixels = np.zeros((20, 30), bool)
    pixels[5:10, 3:25] = True
    Image.fromarray(pixels).convert("1").save(tmp_path / "mask.png")
    assert Image.open(tmp_path / "mask.png").mode == "1"
    image = read_slice(tmp_path / "mask.png")
    np.testing.assert_array_equal(image.pixels, pixels * 255.0)


def test_palette_png_is_read_through_its_palette_not_as_indices(tmp_path):
    """A palette PNG's pixels are indices into its colour table; index 0 may well be white."""
    grey = np.array([[0, 64], [128, 255]], np.uint8)
    palette_image = Image.fromarray(grey).convert("RGB").quantize(4)  # palette order is not grey order
    palette_image.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P"
        indices = np.asarray(check)
        expected = np.asarray(check.convert("RGB")).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert not np.array_equal(indices, grey)  # the indices are not the grey values
    np.testing.assert_allclose(read_slice(tmp_path / "p.png").pixels, expected, atol=1e-3)
    np.testing.assert_allclose(expected, grey, atol=1.0)


def test_palette_png_with_transparency_and_grey_with_alpha(tmp_path):
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    image = Image.fromarray(grey).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "pt.png", transparency=0)
    np.testing.assert_allclose(read_slice(tmp_path / "pt.png").pixels, grey, atol=1.0)
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_slice(tmp_path / "la.png").pixels, grey)


def test_one_bit_tiff_is_read_as_black_and_white(tmp_path):
    import tifffile

    pixels = np.zeros((8, 12), bool)
    pixels[2:5, 3:9] = True
    tifffile.imwrite(tmp_path / "bits.tif", pixels)
    np.testing.assert_array_equal(read_slice(tmp_path / "bits.tif").pixels, pixels * 255.0)


def test_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, tiny_config, monkeypatch):
    """A write that fails inside a file object carries no file name: "[Errno 28] No space left on device"."""
    import errno

    import lsms_core.checkpoint as checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    target = tmp_path / "run" / "best.safetensors"
    with pytest.raises(OSError) as caught:
        save_checkpoint(target, build_model(tiny_config.model), tiny_config)
    assert caught.value.errno == errno.ENOSPC and str(target) in str(caught.value)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the manifest's descriptor through /proc")
def test_full_disk_while_appending_the_manifest_line_names_the_file(tmp_path, monkeypatch):
    import errno

    root = tmp_path / "d"
    dataset = AnnotationDataset.create(root)
    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("annotations.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(OSError) as caught:
        dataset.add(image, image > 0, "a lesion", split_group="p-1", modality="CT", units="HU")
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and str(root / "annotations.jsonl") in str(caught.value)
    assert validate_dataset(root) == [] or all(p.severity == "warning" for p in validate_dataset(root))


def test_palette_tiff_is_read_through_its_colormap(tmp_path):
    import tifffile

    indices = np.array([[0, 1], [2, 3]], np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :4] = np.array([65535, 0, 32768, 16384], np.uint16)  # grey entries, not in index order
    tifffile.imwrite(tmp_path / "p.tif", indices, photometric="palette", colormap=colormap)
    np.testing.assert_allclose(read_slice(tmp_path / "p.tif").pixels, [[65535, 0], [32768, 16384]], rtol=1e-4)
