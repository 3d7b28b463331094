"""The widget under stress, in a real napari viewer: every mishap ends in a clear message and a
viewer that still works.

Segment pressed again mid-run, the source closed or replaced or another image picked mid-run,
a dataset folder that cannot be written (permissions, full disk) at save time, CUDA running out
of memory. Most runs use a stand-in model that waits for the test's go, so that "mid-run" is
exact; the out-of-memory tests use the tiny checkpoint through the real Segmenter. Cancel, and
the source closed mid-run with the real model: tests/test_widget.py::test_cancel_and_closed_source_discard_the_result.
"""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest
import torch
from napari.layers import Labels
from qtpy.QtCore import Qt

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.validate import validate_dataset
from lsms_napari.widget.session import Proposal
from lsms_napari.widget.widget import CHECKPOINT_FILE

WAIT_MS = 30_000


class GatedModel:
    """Stands in for WidgetSession.run: each run waits until the test opens its gate."""

    def __init__(self) -> None:
        self.gates: list[threading.Event] = []

    def run(self, request) -> Proposal:
        gate = threading.Event()
        self.gates.append(gate)
        if not gate.wait(WAIT_MS / 1000):
            raise TimeoutError("the test never let this run finish")
        mask = np.zeros(request.pixels.shape, bool)
        height, width = mask.shape
        mask[height // 3: height // 2, width // 3: width // 2] = True
        model = {"name": "gated-test-model", "sha256": "0" * 64, "preset": "lsms-tiny"}
        return Proposal(request, mask, model, 0.01, request.image_sha)

    def release(self, index: int = -1) -> None:
        self.gates[index].set()


@pytest.fixture
def setup(reflits_widget, monkeypatch):
    viewer, widget, image = reflits_widget
    model = GatedModel()
    monkeypatch.setattr(widget.session, "run", model.run)
    return viewer, widget, image, model


def _labels(viewer) -> list[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def _start(qtbot, widget, model, text: str = "the largest lesion") -> None:
    runs = len(model.gates)
    widget.expression.setText(text)
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(model.gates) == runs + 1, timeout=WAIT_MS)


def _segment(qtbot, viewer, widget, model, text: str = "the largest lesion") -> Labels:
    before = len(_labels(viewer))
    _start(qtbot, widget, model, text)
    model.release()
    qtbot.waitUntil(lambda: len(_labels(viewer)) == before + 1 and widget.segment_button.isEnabled(), timeout=WAIT_MS)
    return _labels(viewer)[-1]


def _save(qtbot, widget) -> str:
    """Save and wait for it to end (a quick failure may end before waitSignal could connect)."""
    assert widget.save() is not None, widget.data_status.text()
    qtbot.waitUntil(lambda: not widget._saving, timeout=WAIT_MS)
    return widget.data_status.text()


def _errors(root) -> list[str]:
    return [str(p) for p in validate_dataset(root) if p.severity == "error"]


def test_segment_pressed_again_mid_run_starts_nothing(qtbot, setup):
    viewer, widget, image, model = setup
    _start(qtbot, widget, model)
    assert not widget.segment_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)  # disabled: ignored
    qtbot.keyClick(widget.expression, Qt.Key_Return)  # Return in the expression field calls segment() directly
    assert "Still segmenting" in widget.status.text()
    widget.segment()
    qtbot.wait(100)
    assert len(model.gates) == 1, "a second run was started while the first was going"
    model.release()
    qtbot.waitUntil(lambda: widget.segment_button.isEnabled(), timeout=WAIT_MS)
    qtbot.wait(100)
    assert len(_labels(viewer)) == 1 and "gated-test-model" in widget.status.text()

    # Cancel, then Segment at once: the cancelled run ends first and must not re-enable the
    # buttons of the run still going, nor add its result.
    _start(qtbot, widget, model, "all lesions")
    qtbot.mouseClick(widget.cancel_button, Qt.LeftButton)
    _start(qtbot, widget, model, "the smallest lesion")
    model.release(-2)
    qtbot.wait(300)
    assert not widget.segment_button.isEnabled() and widget.cancel_button.isEnabled()
    assert len(_labels(viewer)) == 1
    model.release(-1)
    qtbot.waitUntil(lambda: len(_labels(viewer)) == 2 and widget.segment_button.isEnabled(), timeout=WAIT_MS)
    qtbot.wait(100)
    assert [layer.name for layer in _labels(viewer)] == ["the largest lesion", "the smallest lesion"]

    # Save pressed twice: one annotation, and a message for the second press.
    assert widget.save() is not None
    assert widget.save() is None and "Still saving" in widget.data_status.text()
    qtbot.waitUntil(lambda: not widget._saving, timeout=WAIT_MS)
    assert "Saved" in widget.data_status.text()
    assert len(AnnotationDataset.open(widget.dataset_path.text())) == 1


def test_another_image_picked_mid_run_keeps_the_result_on_its_source(qtbot, setup):
    viewer, widget, image, model = setup
    _start(qtbot, widget, model)
    other = viewer.add_image(np.zeros((64, 64), np.float32), name="another image")
    widget.image_combo.setCurrentText(other.name)
    model.release()
    qtbot.waitUntil(lambda: len(_labels(viewer)) == 1, timeout=WAIT_MS)
    [labels] = _labels(viewer)
    assert labels.metadata["lsms_source"] == image.name and labels.data.shape == image.data.shape
    assert f'on "{image.name}", the image Segment ran on' in widget.status.text()
    assert "Saved" in _save(qtbot, widget)


@pytest.mark.parametrize("shape", ["same", "other"])
def test_source_replaced_mid_run_discards_the_result(qtbot, setup, shape):
    viewer, widget, image, model = setup
    name = image.name
    _start(qtbot, widget, model)
    viewer.layers.remove(image)  # and another image opened under the same name
    replacement = viewer.add_image(np.zeros(image.data.shape if shape == "same" else (100, 80), np.float32),
                                   name=name)
    model.release()
    qtbot.waitUntil(lambda: widget.segment_button.isEnabled(), timeout=WAIT_MS)
    qtbot.wait(100)
    assert _labels(viewer) == []
    assert f'the image "{name}" changed while segmenting' in widget.status.text()
    labels = _segment(qtbot, viewer, widget, model)  # the viewer still works: Segment on the new image
    assert labels.data.shape == replacement.data.shape


@pytest.mark.parametrize("failure", ["not writable", "disk full"])
def test_unwritable_dataset_folder_keeps_earlier_saves_and_the_viewer(qtbot, setup, tmp_path, monkeypatch, failure):
    import lsms_core.dataset.store as store

    viewer, widget, image, model = setup
    root = tmp_path / "annotations"
    first = _segment(qtbot, viewer, widget, model)
    assert "Saved" in _save(qtbot, widget)
    [saved] = AnnotationDataset.open(root).records
    mask_bytes = (root / saved["mask"]).read_bytes()

    _segment(qtbot, viewer, widget, model, "all lesions")
    real_write = store.atomic_write_bytes

    def refuse(path, data):  # chmod does not stop root, so the refusal is simulated where it happens
        if failure == "not writable":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        if path.suffix == ".png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", refuse)
    message = _save(qtbot, widget)
    assert message.startswith("not saved: could not write to the dataset folder")
    assert ("not writable" if failure == "not writable" else "disk holding it is full") in message
    assert "earlier ones are intact" in message and "Traceback" not in message
    dataset = AnnotationDataset.open(root)
    assert _errors(root) == [] and [r["id"] for r in dataset.records] == [saved["id"]]
    assert (root / saved["mask"]).read_bytes() == mask_bytes

    monkeypatch.setattr(store, "atomic_write_bytes", real_write)  # space freed / another folder chosen
    widget.dataset_path.setText(str(tmp_path / "elsewhere"))
    assert "Saved" in _save(qtbot, widget)
    widget.dataset_path.setText(str(root))
    assert "Saved" in _save(qtbot, widget)
    assert _errors(root) == [] and len(AnnotationDataset.open(root)) == 2
    viewer.layers.selection.active = first
    assert "px" in widget.update_measurements()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: an illegal memory access was encountered")],
                         ids=["OutOfMemoryError", "RuntimeError-oom", "other-cuda-error"])
def test_cuda_out_of_memory_falls_back_to_the_cpu_with_a_message(qtbot, reflits_widget, monkeypatch,
                                                                 tiny_checkpoint, error):
    viewer, widget, _ = reflits_widget
    widget.model_combo.setCurrentText(CHECKPOINT_FILE)
    widget.checkpoint_path.setText(str(tiny_checkpoint))
    segmenter = widget.session.segmenter(str(tiny_checkpoint), "cpu")
    segmenter._device = torch.device("cuda")  # pretend the warm model lives on a GPU
    real_run, calls = segmenter._run, []

    def run(model_input, text):
        calls.append(segmenter.device.type)
        if segmenter.device.type == "cuda":
            raise error
        return real_run(model_input, text)

    monkeypatch.setattr(segmenter, "_run", run)
    widget.expression.setText("the largest lesion")
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.segment_button.isEnabled(), timeout=WAIT_MS)
    qtbot.wait(100)
    if "illegal memory access" in str(error):  # not a memory shortage: no silent retry, a clear failure
        assert calls == ["cuda"] and _labels(viewer) == []
        assert widget.status.text().startswith("segmentation failed: CUDA error: an illegal memory access")
        return
    assert calls == ["cuda", "cpu"] and len(_labels(viewer)) == 1
    assert "Note: cuda ran out of memory; this and later calls run on the CPU." in widget.status.text()
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)  # later runs: CPU, no more notes
    qtbot.waitUntil(lambda: len(_labels(viewer)) == 2, timeout=WAIT_MS)
    assert calls == ["cuda", "cpu", "cpu"] and "Note:" not in widget.status.text()
