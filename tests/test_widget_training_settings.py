"""The training panel's settings reach lsms-train (issue 11, item 1): epochs, image size, learning rate and
batch size are shown with fine-tuning defaults, typed by the user, and the real Train button starts the
child with them on its command line. The child process is replaced by a stand-in that records its command
line (no model is trained here)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from qtpy.QtCore import Qt

from lsms_napari.widget import training, training_panel


class RecordingPopen:
    """Stands in for subprocess.Popen: records the command line and runs until terminated."""

    started: list["RecordingPopen"] = []

    def __init__(self, command, stdout=None, stderr=None):
        self.command = list(command)
        self.returncode = None
        RecordingPopen.started.append(self)

    def poll(self):
        return self.returncode

    def terminate(self):
        self.returncode = -signal.SIGTERM

    kill = terminate

    def wait(self, timeout=None):
        return self.returncode


@pytest.fixture
def recorded(monkeypatch):
    RecordingPopen.started = []
    monkeypatch.setattr(training.subprocess, "Popen", RecordingPopen)
    return RecordingPopen.started


@pytest.fixture
def with_dataset(reflits_widget, tmp_path):
    viewer, widget, _ = reflits_widget
    dataset = tmp_path / "annotations"
    dataset.mkdir()
    (dataset / "dataset.json").write_text("{}")
    widget.dataset_path.setText(str(dataset))
    return widget, dataset


def _retype(qtbot, box, text: str) -> None:
    """Select what a spin box or line edit holds and type ``text`` over it, as a user does."""
    edit = box.lineEdit() if hasattr(box, "lineEdit") else box
    edit.selectAll()
    qtbot.keyClicks(edit, text)


def _value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_the_panel_shows_fine_tuning_defaults(with_dataset):
    widget, _ = with_dataset
    assert widget.epochs.value() == 5 and widget.image_size.value() == 256
    assert widget.learning_rate.text() == "3e-4" and widget.batch_size.value() == 8
    args = widget.training_panel.settings_args("annotations")
    settings = [_value(args, flag) for flag in ("--epochs", "--image-size", "--lr", "--batch-size")]
    assert settings == ["5", "256", "0.0003", "8"]
    # fine-tuning the model in use is the default (issue 11, item 3); its architecture comes with it
    # the automatic choice gives the liver model to the RefLiTS slice: named "default", as before
    assert widget.training_panel.fine_tune.isChecked() and widget.model_picker.checkpoint() == "auto"
    assert widget.checkpoint() == "default"
    assert _value(args, "--init-checkpoint") == "default" and "--preset" not in args


def test_unticking_fine_tune_trains_a_new_model_and_a_chosen_checkpoint_is_fine_tuned(qtbot, with_dataset,
                                                                                       tmp_path):
    widget, _ = with_dataset
    panel = widget.training_panel
    panel.fine_tune.click()  # what a mouse click on the box does
    assert not panel.fine_tune.isChecked()
    args = panel.settings_args("annotations")
    assert "--init-checkpoint" not in args and _value(args, "--preset") == "lsms"
    panel.fine_tune.click()
    mine = tmp_path / "mine.safetensors"
    widget.model_picker.use_checkpoint(str(mine))
    assert _value(panel.settings_args("annotations"), "--init-checkpoint") == str(mine)


def test_typed_settings_reach_the_childs_command_line_through_the_train_button(qtbot, with_dataset, recorded):
    """The button used to reach train(extra_args=False): lsms-train ran on bare defaults (100 epochs,
    480 px, lr 3e-5, batch 16) whatever the panel said."""
    widget, dataset = with_dataset
    _retype(qtbot, widget.epochs, "3")
    _retype(qtbot, widget.image_size, "128")
    _retype(qtbot, widget.learning_rate, "1e-4")
    _retype(qtbot, widget.batch_size, "2")
    assert (widget.epochs.value(), widget.image_size.value(), widget.batch_size.value()) == (3, 128, 2)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    [child] = recorded
    command = child.command
    assert command[:4] == [sys.executable, "-m", "training.train_cli", str(dataset)]
    assert _value(command, "--epochs") == "3" and _value(command, "--image-size") == "128"
    assert _value(command, "--lr") == "0.0001" and _value(command, "--batch-size") == "2"
    assert command.count("--epochs") == 1 and _value(command, "--exit-with-parent") == str(os.getpid())
    assert _value(command, "--init-checkpoint") == "default"
    assert "Training in the background" in widget.data_status.text()
    assert widget.cancel_training_button.isEnabled() and not widget.train_button.isEnabled()

    qtbot.mouseClick(widget.cancel_training_button, Qt.LeftButton)  # the stand-in ends on SIGTERM
    qtbot.waitUntil(lambda: widget.train_button.isEnabled(), timeout=10_000)
    assert child.returncode == -signal.SIGTERM and "training cancelled" in widget.data_status.text()


@pytest.mark.parametrize("field,text,message", [
    ("learning_rate", "fast", "learning rate 'fast' is not a number between 0 and 1"),
    ("learning_rate", "2", "learning rate '2' is not a number between 0 and 1"),
    ("image_size", "100", "image size 100 px is not a multiple of 32: use e.g. 96"),
])
def test_a_bad_setting_starts_nothing_and_says_what_to_type(qtbot, with_dataset, recorded, field, text, message):
    widget, _ = with_dataset
    _retype(qtbot, getattr(widget, field), text)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    assert recorded == []
    assert widget.data_status.text().startswith("not started: ") and message in widget.data_status.text()
    assert widget.train_button.isEnabled() and widget.training_panel.training is None


def test_parse_learning_rate_takes_plain_and_scientific_notation():
    assert training_panel.parse_learning_rate(" 3e-4 ") == pytest.approx(3e-4)
    assert training_panel.parse_learning_rate("0.001") == pytest.approx(1e-3)
    for bad in ("", "0", "-1e-3", "nan", "1"):
        with pytest.raises(ValueError, match="type e.g. 3e-4"):
            training_panel.parse_learning_rate(bad)


def test_docs_name_the_settings_and_their_defaults():
    docs = " ".join((Path(__file__).resolve().parents[1] / "docs" / "plugin.md").read_text().split())
    assert "epochs 5, image size 256 px, learning rate 3e-4, batch size 8" in docs
