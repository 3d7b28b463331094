"""The "Referring Lesion Segment" widget in a real napari viewer (pytest-qt, Xvfb)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from napari.layers import Labels
from qtpy.QtCore import Qt, QTimer

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.validate import validate_dataset
from lsms_napari.widget import ReferringLesionSegmentWidget

SEGMENT_TIMEOUT_MS = 180_000


@pytest.fixture
def setup(reflits_widget):
    return reflits_widget


def _labels(viewer) -> list[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def _segment(qtbot, viewer, widget, text: str) -> Labels:
    before = len(_labels(viewer))
    widget.expression.setText(text)
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(_labels(viewer)) == before + 1, timeout=SEGMENT_TIMEOUT_MS)
    return _labels(viewer)[-1]


def _errors(root) -> list[str]:
    return [str(p) for p in validate_dataset(root) if p.severity == "error"]


def test_segment_adds_labels_on_the_source_and_a_second_keeps_the_first(qtbot, setup):
    viewer, widget, image = setup
    first = _segment(qtbot, viewer, widget, "the largest lesion")
    assert first.data.shape == image.data.shape and first.data.dtype == np.uint8
    np.testing.assert_allclose(first.scale, image.scale)
    assert first.metadata["lsms_source"] == image.name and first.name == "the largest lesion"
    assert first.data.any()  # the default model finds a lesion on this slice
    assert "px" in widget.measurements.text() and "HU" in widget.measurements.text()
    second = _segment(qtbot, viewer, widget, "all lesions")
    assert _labels(viewer) == [first, second] and first.data.any()
    # an expression the selector rejects every candidate for gets the closest match, and the user is told
    closest = _segment(qtbot, viewer, widget, "the second largest lesion")
    assert closest.data.any() and not (closest.data & first.data).any()
    assert "closest match is shown" in widget.status.text()


def test_next_match_shows_the_lesion_the_words_rank_next_and_the_save_says_which(qtbot, setup, lits, tmp_path):
    """LiTS slice 96, "the second largest lesion": the default model's answer is another lesion
    (tests/test_selection.py); one click on Next match shows the named one, and Save records which match
    was taken; more clicks go round to the answer; a layer edited since Segment keeps its edits."""
    from scipy import ndimage

    from lsms_core.lits import TUMOUR
    from lsms_core.referring import score_referring

    viewer, widget, image = setup
    other = viewer.add_image(lits.hu[96], name="LiTS slice 96", metadata=dict(image.metadata))
    widget.image_combo.setCurrentText(other.name)
    labels = _segment(qtbot, viewer, widget, "the second largest lesion")
    answer = labels.data.copy()
    tumours, _ = ndimage.label(lits.labels[96] == TUMOUR, structure=np.ones((3, 3)))
    second = int(np.argsort(-np.bincount(tumours.ravel())[1:])[1]) + 1
    assert labels.metadata["lsms_source"] == other.name and not score_referring(answer > 0, tumours, second).hit
    assert "Next match (Shift-N) shows the one the words rank next" in widget.status.text()
    qtbot.mouseClick(widget.next_match_button, Qt.LeftButton)
    assert widget.status.text().startswith('Match 2 of ') and "the lesion the words rank next" in widget.status.text()
    assert score_referring(labels.data > 0, tumours, second).hit
    assert widget.measurements.text() and "px" in widget.measurements.text()
    qtbot.mouseClick(widget.save_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: "Saved" in widget.data_status.text() or "not saved" in widget.data_status.text(),
                    timeout=60_000)
    assert "Saved" in widget.data_status.text(), widget.data_status.text()
    [record] = AnnotationDataset.open(tmp_path / "annotations").records
    assert record["provenance"]["model"]["match"] == 1 and record["provenance"]["edit_dice"] == 1.0
    assert _errors(tmp_path / "annotations") == []
    count = int(widget.status.text().split()[3].rstrip(":"))
    for _ in range(count - 1):
        qtbot.mouseClick(widget.next_match_button, Qt.LeftButton)
    assert widget.status.text().startswith(f"Match 1 of {count}") and np.array_equal(labels.data, answer)
    edited = answer.copy()
    edited[:4, :4] = 1  # the radiologist paints
    labels.data = edited
    qtbot.mouseClick(widget.next_match_button, Qt.LeftButton)
    assert "was edited since Segment" in widget.status.text() and np.array_equal(labels.data, edited)


def test_all_model_work_runs_on_one_thread(qtbot, setup, monkeypatch):
    """Loading and every Segment run on the session's one model thread, never on napari's pool
    threads or the GUI thread (one OpenMP team: docs/benchmarks.md)."""
    import threading

    from lsms_core.inference import Segmenter

    viewer, widget, _ = setup
    threads = []
    original = Segmenter.segment

    def recording(self, *args, **kwargs):
        threads.append(threading.current_thread())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "segment", recording)
    for text in ("the largest lesion", "all lesions", "the smallest lesion"):
        _segment(qtbot, viewer, widget, text)
    assert len(threads) == 3 and len(set(threads)) == 1
    assert threads[0].name.startswith("lsms-model") and threads[0] is not threading.main_thread()


def test_viewer_keeps_answering_while_segment_runs(qtbot, setup):
    viewer, widget, image = setup
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(viewer.dims.current_step))
    widget.expression.setText("the largest lesion")
    start = time.perf_counter()
    timer.start(20)
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)  # this widget's first run also loads the model
    assert not widget.segment_button.isEnabled()  # the click returned at once; the work is in a thread
    viewer.add_points([[10, 10]], name="clicked meanwhile")  # the viewer takes edits meanwhile
    qtbot.waitUntil(lambda: len(_labels(viewer)) == 1, timeout=SEGMENT_TIMEOUT_MS)
    elapsed = time.perf_counter() - start
    timer.stop()
    assert "clicked meanwhile" in viewer.layers
    assert elapsed > 0.2, "the run was too short to tell"
    # A blocked event loop would serve no ticks until the end; a free one serves most of them.
    assert len(ticks) >= 0.3 * elapsed / 0.020, f"{len(ticks)} timer ticks in {elapsed:.2f} s"


def test_structured_fields_compose_the_expression(qtbot, setup):
    viewer, widget, image = setup
    widget.field_combos["size"].setCurrentText("largest")
    widget.field_combos["location"].setCurrentText("right lobe")
    labels = _segment(qtbot, viewer, widget, "")
    assert labels.name == "The largest lesion in the right lobe of the liver."


def test_edit_save_and_read_back(qtbot, setup, tmp_path):
    viewer, widget, image = setup
    labels = _segment(qtbot, viewer, widget, "the largest lesion")
    proposal = labels.data.copy()
    edited = proposal.copy()
    edited[:, :64] = 0  # the radiologist erases part of it
    labels.data = edited
    widget.window_combo.setCurrentText("liver")
    worker = widget.save()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert "Saved" in widget.data_status.text()
    root = tmp_path / "annotations"
    assert _errors(root) == []
    dataset = AnnotationDataset.open(root)
    [record] = dataset.records
    np.testing.assert_array_equal(dataset.read_mask(record), edited > 0)
    np.testing.assert_array_equal(dataset.read_mask(record, "proposal"), proposal > 0)
    np.testing.assert_array_equal(dataset.read_image(record), image.data)
    assert record["text"] == "the largest lesion" and record["units"] == "HU"
    assert record["window"]["name"] == "liver"
    assert record["provenance"]["model"]["name"] == "lsms-reflits"
    assert record["provenance"]["edit_dice"] == pytest.approx(
        2 * ((edited > 0) & (proposal > 0)).sum() / ((edited > 0).sum() + (proposal > 0).sum()))


def test_a_crash_between_two_saves_loses_nothing(qtbot, setup, tmp_path, monkeypatch):
    viewer, widget, image = setup
    _segment(qtbot, viewer, widget, "the largest lesion")
    with qtbot.waitSignal(widget.save().finished, timeout=60_000):
        pass
    from lsms_core.dataset import store

    def crash(self, lines):
        raise OSError("simulated crash while appending")

    monkeypatch.setattr(store.AnnotationDataset, "_append_lines", crash)
    _segment(qtbot, viewer, widget, "all lesions")
    with qtbot.waitSignal(widget.save().finished, timeout=60_000):
        pass
    assert "not saved" in widget.data_status.text()
    monkeypatch.undo()
    root = tmp_path / "annotations"
    assert _errors(root) == [] and [r["text"] for r in AnnotationDataset.open(root).records] == ["the largest lesion"]
    with qtbot.waitSignal(widget.save().finished, timeout=60_000):
        pass
    assert [r["text"] for r in AnnotationDataset.open(root).records] == ["the largest lesion", "all lesions"]


def test_refuses_to_attach_a_mask_to_a_changed_image(qtbot, setup, tmp_path):
    viewer, widget, image = setup
    _segment(qtbot, viewer, widget, "the largest lesion")
    image.data = image.data + 1.0  # the pixels under the mask are no longer the ones segmented
    with qtbot.waitSignal(widget.save().finished, timeout=60_000):
        pass
    assert "changed since it was segmented" in widget.data_status.text()
    assert not (tmp_path / "annotations" / "annotations.jsonl").exists()


def test_no_finding_is_a_valid_annotation(qtbot, setup, tmp_path):
    viewer, widget, image = setup
    labels = _segment(qtbot, viewer, widget, "a cyst in segment II")
    labels.data = np.zeros_like(labels.data)
    assert widget.update_measurements() == "no finding (empty mask)"
    with qtbot.waitSignal(widget.save().finished, timeout=60_000):
        pass
    assert _errors(tmp_path / "annotations") == []


def test_cancel_and_closed_source_discard_the_result(qtbot, setup):
    viewer, widget, image = setup
    widget.expression.setText("the largest lesion")
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)
    worker = widget._worker
    qtbot.mouseClick(widget.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=SEGMENT_TIMEOUT_MS)
    qtbot.wait(200)
    assert _labels(viewer) == [] and widget.status.text() == "Cancelled."
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)
    worker = widget._worker
    viewer.layers.remove(image)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=SEGMENT_TIMEOUT_MS)
    qtbot.wait(200)
    assert _labels(viewer) == [] and "closed while segmenting" in widget.status.text()


def test_current_slice_of_a_stack(qtbot, make_napari_viewer, ct_series):
    viewer = make_napari_viewer()
    [stack] = viewer.open(str(ct_series), plugin="lsms-napari")
    widget = ReferringLesionSegmentWidget(viewer)
    widget.device_combo.setCurrentText("cpu")
    viewer.dims.set_point(0, 3.0)  # the middle slice, in world units (mm)
    pixels, index = widget.current_slice(stack)
    assert index == 1
    labels = _segment(qtbot, viewer, widget, "the largest lesion")
    assert labels.data.shape == (3, 512, 512)
    assert not labels.data[0].any() and not labels.data[2].any()  # only the slice it was computed on


def test_export_and_train_from_the_widget(qtbot, setup, mini_dataset, tmp_path):
    viewer, widget, image = setup
    widget.dataset_path.setText(str(mini_dataset))
    with qtbot.waitSignal(widget.export_lvit(str(tmp_path / "lvit")).finished, timeout=60_000):
        pass
    assert (tmp_path / "lvit" / "Train_Folder" / "Train_text.xlsx").exists()
    run = widget.train(["--preset", "lsms-tiny", "--image-size", "64", "--epochs", "1", "--batch-size", "8",
                        "--lr", "1e-3"])
    qtbot.waitUntil(lambda: widget.use_model_button.isEnabled(), timeout=300_000)
    assert "training finished" in widget.data_status.text()
    qtbot.mouseClick(widget.use_model_button, Qt.LeftButton)
    assert widget.checkpoint() == str(run.best_checkpoint)


def test_proposals_are_bounded_and_forgotten_with_their_layer(qtbot, setup):
    """Issue 15: WidgetSession.proposals kept every proposal (and the slice it holds) for the widget's
    lifetime. Now a closed Labels layer's proposal is dropped, and at most ``limit`` are kept."""
    from lsms_napari.widget.session import Proposal, SegmentRequest

    viewer, widget, image = setup
    pixels = np.asarray(image.data)

    def propose(text: str) -> Labels:
        request = SegmentRequest(pixels, text, True, image.name, None)
        mask = np.zeros(pixels.shape, bool)
        mask[100:120, 100:120] = True
        return widget._on_proposal(Proposal(request, mask, {"name": "test"}, 0.0, request.image_sha),
                                   widget._request_id)

    first, second = propose("a lesion"), propose("all lesions")
    assert len(widget.session.proposals) == 2 and widget.active_proposal()[0] is second
    viewer.layers.remove(first)
    assert len(widget.session.proposals) == 1 and first.metadata["lsms_proposal"] not in widget.session.proposals
    widget.session.proposals.limit = 3
    layers = [propose(f"lesion {i}") for i in range(5)]
    assert len(widget.session.proposals) == 3  # the least recently used were dropped
    assert [l.metadata["lsms_proposal"] in widget.session.proposals for l in layers] == [False, False, True, True, True]
    viewer.layers.selection.active = layers[0]
    assert widget.active_proposal() is None and widget.update_measurements() == ""  # dropped: nothing to measure
    viewer.layers.selection.active = layers[-1]
    assert widget.active_proposal()[0] is layers[-1] and "px" in widget.update_measurements()


def test_the_train_button_passes_the_widgets_settings(qtbot, setup, tmp_path, monkeypatch):
    """Found while splitting the widget (issue 15): the button was connected to ``train`` directly, so Qt's
    ``checked=False`` arrived as ``extra_args`` and lsms-train ran with its own defaults, ignoring the
    epochs box. Now the button starts a run with the widget's settings."""
    from lsms_napari.widget import training_panel

    viewer, widget, _ = setup
    dataset = tmp_path / "annotations"
    dataset.mkdir()
    (dataset / "dataset.json").write_text("{}")
    started = []

    class FakeProcess:
        resumed = False

        def __init__(self, dataset, run, args):
            started.append(args)

        def running(self):
            return False

    monkeypatch.setattr(training_panel, "TrainingProcess", FakeProcess)
    monkeypatch.setattr(widget.training_panel.timer, "start", lambda ms: None)
    widget.epochs.setValue(7)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    assert len(started) == 1 and started[0][started[0].index("--epochs") + 1] == "7"
