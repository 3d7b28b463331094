"""Fuzzing the non-GUI readers with mutated real files: only the documented errors may come out.

Real bytes (pydicom's and pydicom-data's DICOM files, scikit-image's PNGs, a real CT slice as
16-bit PNG and .npy, a real checkpoint, a real annotation dataset) are mutated by hypothesis:
bits flipped, bytes overwritten with boundary values, deleted, inserted, the file truncated.
Each reader must then either give a valid result or raise its one documented error type
(ImageError, CheckpointError, DatasetError; the validator never raises, it lists problems),
within a deadline, with a hard alarm against hangs. Reproducible: derandomized, no database.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from lsms_core.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.dataset.validate import Problem, validate_dataset
from lsms_core.dicom import read_dicom
from lsms_core.image_io import read_slice
from lsms_core.preprocessing import ImageError
from lsms_napari._reader import read_dicom_layers

HANG_SECONDS = 20  # a call still running after this is a hang, not a slow example
SCALE = float(os.environ.get("LSMS_FUZZ_SCALE", "1"))  # e.g. 20 for a longer local fuzzing run


def fuzz_settings(examples: int) -> settings:
    """Reproducible (derandomized, no example database) with a per-example deadline."""
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, database=None,
                    deadline=timedelta(seconds=4), print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    """A reader ran past HANG_SECONDS."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS):
    """Raise Hang in the main thread if the block runs longer than ``seconds`` (SIGALRM)."""
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- mutations ------------------------------------------------------------------------------

BOUNDARY_BYTES = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
                  b"\xff\xff\xff\x7f", b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"\x01\x00\x00\x00", b"9" * 8,
                  b"-1", b"NaN", b"1e400", b"\\", b"{", b'"', b"\n"]


def mutations(focus: int, start: int = 0) -> st.SearchStrategy:
    """A list of edits; positions are drawn half the time in [start, focus) (the header), else anywhere."""
    position = st.one_of(st.integers(start, max(focus - 1, start)), st.integers(0, 1 << 24))
    edit = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(0, 7)),
        st.tuples(st.just("set"), position, st.sampled_from(BOUNDARY_BYTES)),
        st.tuples(st.just("delete"), position, st.integers(1, 16)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("truncate"), position, st.just(0)),
    )
    return st.lists(edit, min_size=1, max_size=6)


def mutate(data: bytes, edits) -> bytes:
    buffer = bytearray(data)
    for kind, position, argument in edits:
        if not buffer:
            break
        at = position % len(buffer)
        if kind == "flip":
            buffer[at] ^= 1 << argument
        elif kind == "set":
            buffer[at:at + len(argument)] = argument
        elif kind == "delete":
            del buffer[at:at + argument]
        elif kind == "insert":
            buffer[at:at] = argument
        else:
            del buffer[at:]
    return bytes(buffer)


# --- real inputs ----------------------------------------------------------------------------

DICOM_FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
               "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm", "emri_small.dcm"]


def _pixel_data_offset(data: bytes) -> int:
    """Where the header ends: the (7FE0,0010) Pixel Data tag, little or big endian."""
    offsets = [data.rfind(tag) for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")]
    return max(max(offsets), 132)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def dicom_bytes() -> list[bytes]:
    data = [Path(get_testdata_file(name)).read_bytes() for name in DICOM_FILES]
    for name in DICOM_FILES:  # warm the decoders, so that the deadline measures the reading only
        with contextlib.suppress(ImageError):
            read_slice(get_testdata_file(name), frame=0)
    return data


@pytest.fixture(scope="module")
def png_bytes() -> list[bytes]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    files = [(folder / name).read_bytes() for name in ("text.png", "chessboard_GRAY.png", "chessboard_RGB.png")]
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ct).save(buffer, format="PNG")  # a real CT slice as a 16-bit PNG
    return files + [buffer.getvalue()]


def _expect_slice_or_image_error(call) -> None:
    try:
        with no_hang():
            image = call()
    except ImageError as error:
        assert str(error).strip(), "an error without a message"
        return
    pixels = image.pixels if hasattr(image, "pixels") else image[0][0]
    assert pixels.ndim in (2, 3) and pixels.size > 0 and np.isfinite(pixels).all()


# --- targets --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore")
@fuzz_settings(200)
@given(which=st.integers(0, len(DICOM_FILES) - 1), data=st.data())
def test_mutated_dicom(which, data, dicom_bytes, work):
    """read_slice, the napari reader and the series reader on a damaged DICOM file."""
    original = dicom_bytes[which]
    damaged = mutate(original, data.draw(mutations(_pixel_data_offset(original) + 16, start=128)))
    folder = work / "series"
    folder.mkdir(exist_ok=True)
    path = folder / "b.dcm"
    path.write_bytes(damaged)
    (folder / "a.dcm").write_bytes(original)
    _expect_slice_or_image_error(lambda: read_slice(path, frame=0))
    _expect_slice_or_image_error(lambda: read_dicom_layers(str(path)))
    _expect_slice_or_image_error(lambda: read_dicom(folder).slice(0))


@pytest.mark.filterwarnings("ignore")
@fuzz_settings(150)
@given(which=st.integers(0, 3), data=st.data())
def test_mutated_png(which, data, png_bytes, work):
    original = png_bytes[which]
    path = work / "slice.png"
    path.write_bytes(mutate(original, data.draw(mutations(min(len(original), 256)))))
    _expect_slice_or_image_error(lambda: read_slice(path))


@pytest.mark.filterwarnings("ignore")
@fuzz_settings(100)
@given(data=st.data())
def test_mutated_npy(data, work):
    buffer = io.BytesIO()
    np.save(buffer, pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array[:32, :48])
    original = buffer.getvalue()
    path = work / "slice.npy"
    path.write_bytes(mutate(original, data.draw(mutations(128))))
    _expect_slice_or_image_error(lambda: read_slice(path))


@pytest.mark.filterwarnings("ignore")
@fuzz_settings(100)
@given(which=st.sampled_from(["multipage.tif", "multipage_rgb.tif"]), frame=st.integers(0, 1), data=st.data())
def test_mutated_tiff(which, frame, data, work):
    import skimage

    original = (Path(skimage.__file__).parent / "data" / which).read_bytes()
    path = work / "stack.tif"
    path.write_bytes(mutate(original, data.draw(mutations(min(len(original), 512)))))
    _expect_slice_or_image_error(lambda: read_slice(path, frame=frame))


@pytest.fixture(scope="module")
def checkpoint_bytes(work) -> bytes:
    from lsms_core.config import LSMSConfig, PreprocessConfig, preset
    from lsms_core.model import build_model

    config = LSMSConfig(model=preset("lsms-tiny"), preprocess=PreprocessConfig(image_size=64), preset="lsms-tiny")
    return save_checkpoint(work / "real.safetensors", build_model(config.model), config).read_bytes()


@pytest.mark.filterwarnings("ignore")
@fuzz_settings(100)
@given(data=st.data())
def test_mutated_checkpoint(data, checkpoint_bytes, work):
    header_end = 8 + int.from_bytes(checkpoint_bytes[:8], "little")
    path = work / "damaged.safetensors"
    path.write_bytes(mutate(checkpoint_bytes, data.draw(mutations(header_end))))
    try:
        with no_hang():
            read_checkpoint(path)
    except CheckpointError as error:
        assert str(path) in str(error)


# --- the dataset validator ------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset_root(work) -> Path:
    """A real dataset: three annotations on two slices of a real CT image."""
    pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array[:32, :32].astype(np.float32)
    dataset = AnnotationDataset.create(work / "dataset")
    mask = np.zeros((32, 32), bool)
    mask[8:16, 10:20] = True
    for text, shift, group in (("the largest lesion", 0, "p-1"), ("a cyst near the dome", 0, "p-1"),
                               ("all lesions", 7, "p-2")):
        dataset.add(pixels + shift, mask, text, split_group=group, modality="CT", units="HU",
                    window={"center": 50.0, "width": 400.0, "name": "soft tissue"}, spacing_mm=(0.7, 0.7),
                    proposal=mask, attributes={"diameter_mm": 7.5})
    return dataset.root


def _expect_problems(root: Path) -> None:
    with no_hang():
        problems = validate_dataset(root, deep=True)
    assert all(isinstance(p, Problem) and str(p) for p in problems)
    try:
        with no_hang():
            AnnotationDataset.open(root)
    except DatasetError:
        pass


@pytest.mark.filterwarnings("ignore")
@fuzz_settings(200)
@given(which=st.sampled_from(["annotations.jsonl", "annotations.jsonl", "dataset.json", "mask", "image"]),
       data=st.data())
def test_mutated_dataset_files(which, data, dataset_root):
    """Damaged bytes in the manifest (mostly), dataset.json, a mask PNG or an image .npy."""
    first = json.loads((dataset_root / "annotations.jsonl").read_text().splitlines()[0])
    path = dataset_root / {"mask": first["mask"], "image": first["image"]}.get(which, which)
    original = path.read_bytes()
    try:
        path.write_bytes(mutate(original, data.draw(mutations(min(len(original), 400)))))
        _expect_problems(dataset_root)
    finally:
        path.write_bytes(original)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False)
    | st.sampled_from([float("inf"), float("-inf"), "images/../../x.npy", "masks/none.png", "/etc/passwd", "",
                       "train", "HU", "p-1"])
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=8)


@pytest.mark.filterwarnings("ignore")
@fuzz_settings(200)
@given(line=st.integers(0, 2), field=st.text(max_size=12) | st.sampled_from(
    ["id", "image", "mask", "height", "width", "text", "split", "split_group", "patient_key", "modality", "units",
     "attributes", "expression_kinds", "spacing_mm", "window", "source", "provenance"]),
    value=JSON_VALUES, nested=st.booleans())
def test_mutated_manifest_fields(line, field, value, nested, dataset_root):
    """Valid JSON, wrong content: any field set to any JSON value, at the top or one level down."""
    manifest = dataset_root / "annotations.jsonl"
    original = manifest.read_bytes()
    lines = original.decode().splitlines()
    record = json.loads(lines[line])
    target = record.get("provenance") if nested else record
    target[field] = value
    lines[line] = json.dumps(record, ensure_ascii=False)
    try:
        manifest.write_text("\n".join(lines) + "\n")
        _expect_problems(dataset_root)
    finally:
        manifest.write_bytes(original)


# --- expressions --------------------------------------------------------------------------

@fuzz_settings(150)
@given(text=st.text(st.characters(exclude_categories=()), max_size=300)  # lone surrogates too
       | st.text(st.characters(codec="utf-8"), min_size=2000, max_size=6000))
def test_any_text_is_cleaned_and_tokenized_or_refused(text, text_encoder):
    """Any Unicode text: ExpressionError (nothing visible), or a cleaned expression the encoder tokenizes."""
    from lsms_core.inference import MAX_EXPRESSION_CHARS, ExpressionError, clean_expression

    try:
        with no_hang():
            cleaned = clean_expression(text)
    except ExpressionError:
        return
    assert cleaned and cleaned == cleaned.strip() and len(cleaned) <= MAX_EXPRESSION_CHARS
    with no_hang():
        ids, mask = text_encoder.tokenize([cleaned])
    assert ids.shape == mask.shape and 2 <= ids.shape[1] <= text_encoder.config.max_tokens
