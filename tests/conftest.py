"""Shared fixtures: the real LiTS volume, the real text encoder, small checkpoints."""

from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import pytest
import torch

from lsms_core.config import LSMSConfig, PreprocessConfig, preset
from lsms_core.dataset import AnnotationDataset

# The compiled (ONNX Runtime) path has its own tests (tests/test_compiled.py, which ask for it). Everywhere else
# each new checkpoint would be exported in the widget's background (10-15 s of CPU each), so the suite runs
# eager, CLI subprocesses included, and no test writes to the user's ~/.cache.
os.environ["LSMS_COMPILED"] = "off"
os.environ["LSMS_CACHE_DIR"] = tempfile.mkdtemp(prefix="lsms-test-cache-")


@pytest.fixture(scope="session")
def lits():
    from lsms_core.lits import load_lits_volume

    return load_lits_volume()


@pytest.fixture(scope="session")
def text_encoder():
    from lsms_core.text_encoder import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def tiny_config() -> LSMSConfig:
    return LSMSConfig(model=preset("lsms-tiny"), preprocess=PreprocessConfig(image_size=128), preset="lsms-tiny")


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_config, text_encoder):
    """A randomly initialised tiny model saved as a real checkpoint."""
    from lsms_core.checkpoint import save_checkpoint
    from lsms_core.model import build_model

    torch.manual_seed(0)
    config = tiny_config.replace(text=text_encoder.config)
    model = build_model(config.model).eval()
    return save_checkpoint(tmp_path / "tiny.safetensors", model, config, extra={"name": "tiny-test"})


@pytest.fixture(scope="session")
def mini_dataset(tmp_path_factory, lits):
    """16 training and 6 validation expressions from real LiTS slices."""
    from training.reflits import SOFT_TISSUE_WINDOW, expressions_for_slice

    root = tmp_path_factory.mktemp("mini") / "data"
    dataset = AnnotationDataset.create(root, window=SOFT_TISSUE_WINDOW)
    rng = random.Random(0)
    for split, slices, limit in (("train", (30, 40, 64, 90, 120), 16), ("val", (20, 100, 110), 6)):
        count = 0
        for z in slices:
            for expression in expressions_for_slice(lits.hu[z], lits.labels[z], rng=rng)[:5]:
                if count < limit:
                    dataset.add(lits.hu[z], expression.mask, expression.text, split=split, split_group=f"{split}-{z}",
                                modality="CT", units="HU", window=SOFT_TISSUE_WINDOW,
                                expression_kinds=expression.kinds)
                    count += 1
    assert len(dataset.select("train")) == 16 and len(dataset.select("val")) == 6
    return root


def peak_memory(call) -> int:
    """Peak bytes Python, NumPy and zlib allocated during ``call()`` (tracemalloc sees all three; Pillow's
    and tifffile's own image buffers it does not: spy on their decoders instead)."""
    import tracemalloc

    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def write_ct_series(folder, count: int = 3, spacing_mm: float = 3.0, shuffle: bool = True, header: dict | None = None):
    """``count`` copies of pydicom-data's 512x512 CT slice as a series along z, slice i's pixels
    raised by 10 * i; file names shuffled so that only positions give the order. ``header``: DICOM keyword ->
    value set in every slice (e.g. a FrameOfReferenceUID, patient identifiers)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("693_UNCI.dcm"))
    base = ds.pixel_array.copy()
    for keyword, value in (header or {}).items():
        setattr(ds, keyword, value)
    names = [f"img{i:02d}.dcm" for i in range(count)]
    if shuffle:
        random.Random(1).shuffle(names)
    for i in range(count):
        ds.ImagePositionPatient = [0.0, 0.0, spacing_mm * i]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = count - i
        ds.PixelData = (base + 10 * i).astype(base.dtype).tobytes()
        ds.save_as(folder / names[i])
    return folder


@pytest.fixture
def ct_series(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    return write_ct_series(folder)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _docked_widget(viewer, monkeypatch, tmp_path):
    from lsms_napari.widget import ReferringLesionSegmentWidget

    monkeypatch.setenv("LSMS_NAPARI_SECRET", "test-secret")
    [image] = viewer.open_sample("lsms-napari", "reflits")
    widget = ReferringLesionSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.dataset_path.setText(str(tmp_path / "annotations"))
    return viewer, widget, image


@pytest.fixture
def reflits_widget(make_napari_viewer, monkeypatch, tmp_path):
    """(viewer, widget, image): the widget docked in a real viewer on the RefLiTS sample slice, CPU,
    saving to ``tmp_path/annotations`` with a fixed pseudonymisation secret."""
    return _docked_widget(make_napari_viewer(), monkeypatch, tmp_path)


@pytest.fixture
def shown_reflits_widget(make_napari_viewer, monkeypatch, qtbot, tmp_path):
    """``reflits_widget`` in a window that is shown, laid out and fitted to the slice: the mouse can click
    on the canvas where a pixel is displayed (a hidden canvas does not know its size)."""
    viewer, widget, image = _docked_widget(make_napari_viewer(show=True), monkeypatch, tmp_path)
    viewer.window._qt_window.resize(1400, 900)  # a desktop's size: on a small virtual screen the canvas gets 0 px
    qtbot.waitExposed(viewer.window._qt_viewer.canvas.native)
    qtbot.wait(50)
    viewer.reset_view()
    return viewer, widget, image


def click_canvas(qtbot, viewer, layer, row: float, col: float) -> None:
    """A real left click on the viewer's canvas over ``layer``'s pixel (row, col)."""
    from qtpy.QtCore import Qt

    from benchmarks.harness import canvas_position

    qtbot.mouseClick(viewer.window._qt_viewer.canvas.native, Qt.LeftButton, Qt.NoModifier,
                     canvas_position(viewer, layer, row, col))


def drag_canvas(qtbot, viewer, layer, start: tuple[float, float], end: tuple[float, float], steps: int = 6) -> None:
    """A real left-button drag on the canvas from ``layer``'s pixel ``start`` (row, col) to ``end``."""
    from qtpy.QtCore import QPoint, Qt

    from benchmarks.harness import canvas_position

    native = viewer.window._qt_viewer.canvas.native
    a, b = canvas_position(viewer, layer, *start), canvas_position(viewer, layer, *end)
    qtbot.mousePress(native, Qt.LeftButton, Qt.NoModifier, a)
    for t in np.linspace(0, 1, steps + 1)[1:]:
        qtbot.mouseMove(native, QPoint(int(a.x() + (b.x() - a.x()) * t), int(a.y() + (b.y() - a.y()) * t)))
        qtbot.wait(5)  # each move delivered before the next, as a hand drags
    qtbot.mouseRelease(native, Qt.LeftButton, Qt.NoModifier, b)


@pytest.fixture
def open_widget(make_napari_viewer, monkeypatch, tmp_path):
    """open_widget(sample key) -> (viewer, widget, layers): a real viewer on an lsms-napari sample, the
    widget docked (CPU, saving to tmp_path/annotations), napari's warnings recorded in ``widget.warned``."""
    from lsms_napari.widget import ReferringLesionSegmentWidget
    from lsms_napari.widget import widget as widget_module

    monkeypatch.setenv("LSMS_NAPARI_SECRET", "test-secret")
    warned: list[str] = []
    monkeypatch.setattr(widget_module, "show_warning", warned.append)

    def make(key: str):
        viewer = make_napari_viewer()
        layers = viewer.open_sample("lsms-napari", key)
        widget = ReferringLesionSegmentWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.device_combo.setCurrentText("cpu")
        widget.dataset_path.setText(str(tmp_path / "annotations"))
        widget.warned = warned
        return viewer, widget, layers

    return make


def type_and_segment(qtbot, viewer, widget, text: str, timeout_ms: int = 180_000):
    """Type ``text`` into the Expression box as a user would, click Segment, wait for the new Labels layer."""
    from napari.layers import Labels
    from qtpy.QtCore import Qt

    before = len([layer for layer in viewer.layers if isinstance(layer, Labels)])
    widget.expression.clear()
    qtbot.keyClicks(widget.expression, text)
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len([layer for layer in viewer.layers if isinstance(layer, Labels)]) == before + 1,
                    timeout=timeout_ms)
    return viewer.layers[-1]
