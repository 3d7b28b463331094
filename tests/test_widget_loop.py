"""The annotate -> train -> better model loop in the widget (issue 11, items 2, 5 and 6), clicked.

Training: napari progress with epoch, loss and validation figures; Cancel training stops the child and
keeps its folder resumable, and the next Train resumes it; closing the viewer stops the child (no orphan).
Saving: a hand-drawn Labels layer is saved as such; saving a layer again asks update-or-new; the structured
fields are cleared after a save and saved only with the sentence they compose. Text and status: blank
text refused with the documented message, a long expression elided, the status cleared on another image,
measurements per connected part.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Labels
from qtpy.QtCore import Qt

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.validate import validate_dataset
from lsms_napari.widget import expression as ex
from lsms_napari.widget import save_choice, training_panel
from lsms_napari.widget.training import TrainingStatus

SEGMENT_TIMEOUT_MS = 180_000
TRAIN_TIMEOUT_MS = 600_000
TINY = ["--preset", "lsms-tiny", "--image-size", "64", "--epochs", "2", "--batch-size", "1", "--lr", "1e-3",
        "--save-every-steps", "2", "--model-name", "tiny-loop"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugin.md"


def _click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()!r} is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def _type(qtbot, widget, text: str) -> None:
    widget.expression.clear()
    qtbot.keyClicks(widget.expression, text)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def trainable(reflits_widget, mini_dataset, tmp_path, monkeypatch):
    """The widget on a copy of the mini dataset, its Train button set to a tiny model (2 epochs, 64 px,
    16 steps an epoch, a resumable state every 2 steps)."""
    viewer, widget, image = reflits_widget
    dataset = tmp_path / "annotations"
    shutil.copytree(mini_dataset, dataset)
    widget.dataset_path.setText(str(dataset))
    monkeypatch.setattr(widget.training_panel, "settings_args", lambda dataset: list(TINY))
    return viewer, widget


# --- training ----------------------------------------------------------------------------------------

def test_cancel_keeps_the_run_resumable_and_the_next_train_resumes_it(qtbot, trainable):
    viewer, widget = trainable
    _click(qtbot, widget.train_button)
    run = widget.training_panel.training
    assert run is not None and widget.cancel_training_button.isEnabled() and not widget.train_button.isEnabled()
    state = run.run_dir / "train_state.safetensors"
    qtbot.waitUntil(lambda: state.exists() or not run.running(), timeout=TRAIN_TIMEOUT_MS)
    assert run.running(), f"the run ended before it could be cancelled: {(run.run_dir / 'stderr.log').read_text()}"
    _click(qtbot, widget.cancel_training_button)
    qtbot.waitUntil(lambda: widget.training_panel.cancelled_run is not None, timeout=30_000)
    assert run.process.returncode == -signal.SIGTERM  # stopped by Cancel, not ended on its own
    assert state.exists() and "end" not in [r["event"] for r in _events(run.run_dir)]
    assert "training cancelled" in widget.data_status.text() and str(run.run_dir) in widget.data_status.text()
    assert widget.train_button.text() == "Resume training" and widget.training_panel.start_over_button.isEnabled()
    assert not widget.use_model_button.isEnabled() and not widget.cancel_training_button.isEnabled()

    _click(qtbot, widget.train_button)
    resumed = widget.training_panel.training
    assert resumed is not run and resumed.run_dir == run.run_dir and resumed.resumed
    assert "Resuming the cancelled run" in widget.data_status.text()
    qtbot.waitUntil(lambda: widget.use_model_button.isEnabled() or bool(resumed.status.failed), timeout=TRAIN_TIMEOUT_MS)
    assert resumed.status.failed is None
    events = _events(run.run_dir)
    assert [r["event"] for r in events].count("resume") == 1 and events[-1]["event"] == "end"
    assert [r["epoch"] for r in events if r["event"] == "epoch"][-1] == 2 and events[-1]["iterations"] == 32
    assert widget.data_status.text().startswith("training finished (2 epochs, loss ")
    assert widget.train_button.text() == "Train on this dataset" and not widget.training_panel.start_over_button.isEnabled()
    _click(qtbot, widget.use_model_button)
    assert widget.checkpoint() == str(resumed.best_checkpoint)


def test_closing_the_viewer_stops_the_training_process(qtbot, trainable):
    """It said "lsms-train keeps running in the background": after the viewer closed, an orphan trained on."""
    viewer, widget = trainable
    _click(qtbot, widget.train_button)
    run = widget.training_panel.training
    qtbot.wait(500)
    assert run.running(), (run.run_dir / "stderr.log").read_text()
    viewer.close()
    qtbot.waitUntil(lambda: not run.running(), timeout=30_000)
    assert run.process.returncode == -signal.SIGTERM


def test_training_progress_shows_epoch_loss_and_validation_figures(qtbot, reflits_widget, tmp_path, monkeypatch):
    viewer, widget, _ = reflits_widget
    dataset = tmp_path / "annotations"
    dataset.mkdir()
    (dataset / "dataset.json").write_text("{}")
    fakes = []

    class FakeProcess:
        """Stands in for lsms-train: the test writes its log records."""

        def __init__(self, dataset, run, args):
            self.dataset, self.run_dir, self.args = str(dataset), Path(run), args
            self.status, self.resumed, self.resumable = TrainingStatus(), False, False
            self.best_checkpoint = self.run_dir / "best.safetensors"
            fakes.append(self)

        def running(self):
            return not self.status.finished

        def poll(self):
            return self.status

    monkeypatch.setattr(training_panel, "TrainingProcess", FakeProcess)
    monkeypatch.setattr(widget.training_panel.timer, "start", lambda ms: None)
    _click(qtbot, widget.train_button)
    [fake] = fakes
    assert fake.args[fake.args.index("--epochs") + 1] == str(widget.epochs.value())
    fake.status.read({"event": "start", "epochs": 2, "val_samples": 6})
    fake.status.read({"event": "epoch", "epoch": 1, "epochs": 2, "train_total": 0.5, "val_dice": 0.3,
                      "val_hit_rate": 0.25})
    widget.training_panel.poll()
    bar = widget.training_panel._progress
    assert bar.total == 2 and bar.n == 1
    assert "training: epoch 1/2, loss 0.5, val Dice 0.300, hit rate 0.25" in bar.desc
    assert widget.data_status.text() == "training: epoch 1/2, loss 0.5, val Dice 0.300, hit rate 0.25"
    fake.run_dir.mkdir(parents=True)
    fake.best_checkpoint.write_bytes(b"")
    fake.status.read({"event": "epoch", "epoch": 2, "epochs": 2, "train_total": 0.25, "val_dice": 0.5})
    fake.status.finished = True
    widget.training_panel.poll()
    assert widget.training_panel._progress is None  # closed
    assert widget.data_status.text() == "training finished (2 epochs, loss 0.25, best val Dice 0.500)"
    assert widget.use_model_button.isEnabled()


def test_the_status_of_a_run_without_validation_says_how_best_was_picked():
    status = TrainingStatus()
    for record in ({"event": "start", "epochs": 1, "val_samples": 0},
                   {"event": "note", "message": "no validation possible: split 'val' has no annotations"},
                   {"event": "epoch", "epoch": 1, "epochs": 1, "train_total": 1.5}):
        status.read(record)
    assert status.text == "training: epoch 1/1, loss 1.5" and status.notes[0].startswith("no validation possible")
    status.finished = True
    assert "no validation split, so best.safetensors is the epoch of lowest training loss" in status.text


# --- saving ------------------------------------------------------------------------------------------

def _hand_drawn(viewer, image, name: str = "missed lesion") -> Labels:
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name=name)
    data = labels.data.copy()
    data[40:50, 40:52] = 1  # a lesion the model missed, painted by the user
    data[80:84, 90:93] = 1  # and a second, small one
    labels.data = data
    viewer.layers.selection.active = labels
    return labels


def _save(qtbot, widget, expect: str = "Saved") -> str:
    _click(qtbot, widget.save_button)
    qtbot.waitUntil(lambda: expect in widget.data_status.text() or "not saved" in widget.data_status.text(),
                    timeout=60_000)
    qtbot.waitUntil(lambda: not widget._saving, timeout=10_000)
    return widget.data_status.text()


def test_a_hand_drawn_layer_is_saved_as_hand_drawn_and_measured_per_part(qtbot, reflits_widget, tmp_path):
    viewer, widget, image = reflits_widget
    labels = _hand_drawn(viewer, image)
    lines = widget.measurements.text().split("\n")  # measured per connected part, then the total
    assert lines[0].startswith("missed lesion: 2 parts, total 132 px") and "HU" in lines[0]
    assert lines[1].startswith("part 1: 120 px") and " x " in lines[1]
    assert lines[2].startswith("part 2: 12 px") and " x " in lines[2]

    _click(qtbot, widget.save_button)  # no words yet: refused, nothing written
    assert "type the expression this mask answers" in widget.data_status.text()
    assert not (tmp_path / "annotations").exists()

    _type(qtbot, widget, "the lesion the model missed")
    text = _save(qtbot, widget)
    assert "hand-drawn" in text and "Saved" in text
    root = tmp_path / "annotations"
    assert [str(p) for p in validate_dataset(root) if p.severity == "error"] == []
    dataset = AnnotationDataset.open(root)
    [record] = dataset.records
    assert record["text"] == "the lesion the model missed"
    provenance = record["provenance"]
    assert provenance["model"] is None and provenance["proposal"] is None and provenance["edit_dice"] is None
    assert provenance["origin"] == "hand-drawn"
    np.testing.assert_array_equal(dataset.read_mask(record), labels.data > 0)
    np.testing.assert_array_equal(dataset.read_image(record), image.data)
    assert labels.metadata["lsms_saved"]["id"] == record["id"]


def test_saving_a_layer_again_asks_update_or_new(qtbot, reflits_widget, tmp_path, monkeypatch):
    viewer, widget, image = reflits_widget
    labels = _hand_drawn(viewer, image)
    _type(qtbot, widget, "the lesion the model missed")
    _save(qtbot, widget)
    root = tmp_path / "annotations"
    [first] = AnnotationDataset.open(root).records
    asked, answers = [], ["update", "new", None]

    def answer(parent, layer_name, record_id):
        asked.append((layer_name, record_id))
        return answers.pop(0)

    monkeypatch.setattr(save_choice, "ask_update_or_new", answer)
    data = labels.data.copy()
    data[80:84, 90:93] = 0  # the small part was not a lesion after all
    labels.data = data
    assert "Updated (replaces " in _save(qtbot, widget, "Updated")
    assert asked == [("missed lesion", first["id"])]
    dataset = AnnotationDataset.open(root)
    [updated] = dataset.records  # replaced, not a second line
    assert updated["id"] != first["id"] and updated["provenance"]["replaces"] == first["id"]
    np.testing.assert_array_equal(dataset.read_mask(updated), data > 0)
    assert not (root / first["mask"]).exists()

    _type(qtbot, widget, "the other lesion")
    _save(qtbot, widget)  # "new": the updated one stays, another is added
    assert asked[-1] == ("missed lesion", updated["id"])
    records = AnnotationDataset.open(root).records
    assert [r["text"] for r in records] == ["the lesion the model missed", "the other lesion"]

    _click(qtbot, widget.save_button)  # cancelled: nothing written
    assert widget.data_status.text() == "Not saved (cancelled)." and len(asked) == 3
    assert len(AnnotationDataset.open(root).records) == 2
    assert [str(p) for p in validate_dataset(root)] == []


def test_structured_fields_are_saved_only_with_their_sentence_and_cleared_after_a_save(qtbot, reflits_widget,
                                                                                        tmp_path):
    """The text "the smallest lesion" was saved with size=largest and location=right lobe."""
    viewer, widget, image = reflits_widget
    widget.field_combos["size"].setCurrentText("largest")
    widget.field_combos["location"].setCurrentText("right lobe")
    assert widget.expression.text() == "The largest lesion in the right lobe of the liver."  # the composer wrote it
    _type(qtbot, widget, "the smallest lesion")  # the user's own words: the fields no longer describe them
    _click(qtbot, widget.segment_button)
    qtbot.waitUntil(lambda: len([l for l in viewer.layers if isinstance(l, Labels)]) == 1, timeout=SEGMENT_TIMEOUT_MS)
    assert "structured fields are left out" in widget.status.text()
    text = _save(qtbot, widget)
    assert "structured fields were left out" not in text  # said at Segment; this save has no fields to drop
    root = tmp_path / "annotations"
    [record] = AnnotationDataset.open(root).records
    assert record["text"] == "the smallest lesion"
    assert "size" not in record["attributes"] and "location" not in record["attributes"]
    assert "size" not in record["expression_kinds"]
    assert all(combo.currentText() == "" for combo in widget.field_combos.values())  # cleared after the save
    assert widget.expression.text() == "the smallest lesion"  # typed words stay

    widget.expression.clear()
    widget.field_combos["size"].setCurrentText("largest")
    assert widget.expression.text() == "The largest lesion."
    _click(qtbot, widget.segment_button)
    qtbot.waitUntil(lambda: len([l for l in viewer.layers if isinstance(l, Labels)]) == 2, timeout=SEGMENT_TIMEOUT_MS)
    _save(qtbot, widget)
    second = AnnotationDataset.open(root).records[1]
    assert second["text"] == "The largest lesion." and second["attributes"]["size"] == "largest"
    assert second["expression_kinds"] == ["size"]
    assert widget.field_combos["size"].currentText() == "" and widget.expression.text() == ""  # the composed text too


# --- text, status, measurements ----------------------------------------------------------------------

def test_blank_text_is_refused_with_the_documented_message(qtbot, reflits_widget):
    viewer, widget, _ = reflits_widget
    _type(qtbot, widget, "   ")
    _click(qtbot, widget.segment_button)
    assert widget.status.text() == ex.EMPTY_EXPRESSION
    assert widget._worker is None and widget.segment_button.isEnabled()
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert ex.EMPTY_EXPRESSION in " ".join(DOCS.read_text().split())  # docs/plugin.md quotes it


def test_a_long_expression_is_elided_and_the_status_cleared_on_another_image(qtbot, reflits_widget):
    viewer, widget, image = reflits_widget
    long_text = "the lesion " + "next to the other lesion " * 150  # 3,761 characters
    widget.expression.setText(long_text)
    _click(qtbot, widget.segment_button)
    status = widget.status.text()
    assert status.lower().split(' "')[0].endswith("segmenting") and '"the lesion next to' in status
    assert status.endswith('…"...') and len(status) < 140
    worker = widget._worker
    _click(qtbot, widget.cancel_button)
    assert widget._worker is None and widget.status.text() == "Cancelled."
    qtbot.waitUntil(lambda: not worker.is_running, timeout=SEGMENT_TIMEOUT_MS)
    qtbot.wait(200)  # its finished signal is delivered before the viewer goes
    other = viewer.add_image(np.zeros((32, 32), np.float32), name="another image")
    assert widget.image_combo.findText(other.name) >= 0 and widget.status.text() == "Cancelled."
    widget.image_combo.setCurrentText(other.name)
    assert widget.status.text() == ""
    assert ex.elide("x" * 81) == "x" * 80 + "…" and ex.elide("x" * 80) == "x" * 80


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc (Linux)")
@pytest.mark.parametrize("launcher_lives_s", [3.0, 0.0], ids=["dies-while-training", "dies-before-the-child-starts"])
def test_lsms_train_exits_when_the_process_that_started_it_dies(mini_dataset, tmp_path, launcher_lives_s):
    """--exit-with-parent PID (the widget passes its own PID): a napari killed outright leaves no orphan
    run behind, also when it dies before the child's Python has started (a slow machine's start-up)."""
    import os
    import subprocess
    import sys
    import time

    log = tmp_path / "child.err"
    launcher = (f"import subprocess, sys, os\n"
                f"child = subprocess.Popen([sys.executable, '-m', 'training.train_cli', {str(mini_dataset)!r}, '-o', "
                f"{str(tmp_path / 'run')!r}, '--no-progress', '--exit-with-parent', str(os.getpid()), *{TINY!r}, "
                f"'--epochs', '500'], stdout=subprocess.DEVNULL, stderr=open({str(log)!r}, 'w'))\n"
                f"print(child.pid, flush=True)\n"
                f"import time; time.sleep({launcher_lives_s}); os._exit(0)  # dies without stopping its child\n")
    done = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=120)
    pid = int(done.stdout.split()[0])

    def alive() -> bool:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        return "\nState:\tZ" not in state  # a zombie has ended; its new parent reaps it

    deadline = time.time() + 120
    while alive() and time.time() < deadline:
        time.sleep(0.5)
    if alive():
        os.kill(pid, signal.SIGKILL)
        pytest.fail("lsms-train kept running after the process that started it died")
    assert "the process that started this run ended; stopping" in log.read_text()
