"""Issue 11's "Checked by": the whole annotate -> train -> better model loop in a real napari window,
driven only by clicks and typing. Open the sample, type, Segment, paint a correction, Save (into the
train split), set the training boxes, Train (fine-tuning the default model, the widget's default) with
napari progress, Cancel once and Resume, Use new model, Segment again with it."""

from __future__ import annotations

import json
import signal

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt

from lsms_core.checkpoint import read_checkpoint
from lsms_core.dataset import AnnotationDataset

SEGMENT_TIMEOUT_MS = 180_000
TRAIN_TIMEOUT_MS = 600_000


def _click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()!r} is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def _retype(qtbot, box, text: str) -> None:
    edit = box.lineEdit() if hasattr(box, "lineEdit") else box
    edit.selectAll()
    qtbot.keyClicks(edit, text)


def _segment(qtbot, viewer, widget, text: str) -> Labels:
    before = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    widget.expression.clear()
    qtbot.keyClicks(widget.expression, text)
    _click(qtbot, widget.segment_button)
    qtbot.waitUntil(lambda: len([la for la in viewer.layers if isinstance(la, Labels)]) == len(before) + 1,
                    timeout=SEGMENT_TIMEOUT_MS)
    return viewer.layers[-1]


def test_the_whole_loop_by_clicking(qtbot, reflits_widget, tmp_path):
    viewer, widget, image = reflits_widget
    root = tmp_path / "annotations"

    proposal = _segment(qtbot, viewer, widget, "the largest lesion")
    assert proposal.data.any() and widget.checkpoint() == "default"
    corrected = proposal.data.copy()
    corrected[40:44, 40:44] = 1  # the user paints a missed part
    proposal.data = corrected
    viewer.layers.selection.active = proposal
    widget.split_combo.setCurrentText("train")  # one patient: put it where training reads
    _click(qtbot, widget.save_button)
    qtbot.waitUntil(lambda: "Saved" in widget.data_status.text() or "not saved" in widget.data_status.text(),
                    timeout=60_000)
    assert "Saved" in widget.data_status.text(), widget.data_status.text()
    [record] = AnnotationDataset.open(root).records
    assert record["split"] == "train" and record["text"] == "the largest lesion"

    _retype(qtbot, widget.epochs, "6")
    _retype(qtbot, widget.image_size, "64")
    _retype(qtbot, widget.batch_size, "1")
    assert widget.training_panel.fine_tune.isChecked()
    _click(qtbot, widget.train_button)
    run = widget.training_panel.training
    command = run.process.args
    assert command[command.index("--init-checkpoint") + 1] == "default"
    state = run.run_dir / "train_state.safetensors"
    qtbot.waitUntil(lambda: state.exists() or not run.running(), timeout=TRAIN_TIMEOUT_MS)
    assert run.running(), (run.run_dir / "stderr.log").read_text()
    qtbot.waitUntil(lambda: widget.training_panel._progress is not None, timeout=30_000)
    assert widget.data_status.text().startswith("training: epoch ")  # napari progress and the status
    _click(qtbot, widget.cancel_training_button)
    qtbot.waitUntil(lambda: widget.training_panel.cancelled_run is not None, timeout=30_000)
    assert run.process.returncode == -signal.SIGTERM
    assert widget.train_button.text() == "Resume training"

    _click(qtbot, widget.train_button)
    resumed = widget.training_panel.training
    assert resumed.run_dir == run.run_dir and resumed.resumed
    qtbot.waitUntil(lambda: widget.use_model_button.isEnabled() or bool(resumed.status.failed),
                    timeout=TRAIN_TIMEOUT_MS)
    assert resumed.status.failed is None
    events = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1 and events[-1]["event"] == "end"
    assert [e["epoch"] for e in events if e["event"] == "epoch"][-1] == 6
    _click(qtbot, widget.use_model_button)
    assert widget.checkpoint() == str(resumed.best_checkpoint)
    trained = read_checkpoint(resumed.best_checkpoint)
    assert trained.config.model.select_lesions and trained.config.preprocess.image_size == 64
    assert trained.extra["name"] == "lsms-annotations"

    again = _segment(qtbot, viewer, widget, "the largest lesion")
    assert again.metadata["lsms_source"] == image.name and again is not proposal
    assert "(lsms-annotations)" in widget.status.text()  # made by the new model
    assert np.array_equal(proposal.data, corrected)  # the saved correction is untouched
