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
@pytest.mark.parametrize("changes,message", [
    ({"Rows": 30000, "Columns": 30000}, "more than the 400,000,000"),  # refused before decoding
    ({"Rows": 0}, "the image has 0 pixels"),
    ({"WindowCenter": "nan", "WindowWidth": "inf", "PixelSpacing": ["inf", "0"]}, None),  # ignored, not used
    ({"NumberOfFrames": 7}, "cannot decode the pixel data"),  # 7 frames promised, one present
    ({"NumberOfFrames": "x"}, "image size .* is missing or not a number"),  # not a number at all
])
def test_nonsense_header_values(tmp_path, changes, message):
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
        read_slice(path)
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

