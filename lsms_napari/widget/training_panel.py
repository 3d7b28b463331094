"""The training rows of the "Annotations" box: the run's settings (epochs, image size, learning rate,
batch size), start lsms-train on the dataset, follow it in napari's progress, cancel it (its folder
stays resumable, and the next Train resumes it), use its model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QGridLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                            QVBoxLayout)

from .training import TrainingProcess

POLL_MS = 1000  # how often the run's log is read

# Defaults for fine-tuning on a few corrected annotations on a CPU: the default model's input size, a
# learning rate a third of the from-scratch 1e-3, 5 epochs (a handful of annotations: minutes, not hours).
DEFAULT_EPOCHS, DEFAULT_IMAGE_SIZE, DEFAULT_LR, DEFAULT_BATCH_SIZE = 5, 256, "3e-4", 8
SIZE_STEP = 32  # lsms-train's image size must be a multiple of 32 (the encoder's stride)


def parse_learning_rate(text: str) -> float:
    """The learning rate typed (e.g. "3e-4" or "0.0003"); ValueError saying what is wanted."""
    try:
        value = float(text.strip())
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:  # NaN fails too
        raise ValueError(f"learning rate {text.strip()!r} is not a number between 0 and 1: type e.g. 3e-4 "
                         "(fine-tuning) or 1e-3 (a new model)")
    return value


class TrainingPanel(QVBoxLayout):
    """Epochs, image size, learning rate, batch size, "Fine-tune the current model"; "Train on this
    dataset" (or "Resume training" after a cancel; the resumed run keeps its own settings), "Cancel
    training", "Start over" (forget the cancelled run), "Use new model". ``say``/``fail`` write the data
    status line; ``use_model(path)`` switches the model picker to a checkpoint; ``current_model()`` is
    the model in use (a shipped model's name, the automatic choice's for the current image, or a checkpoint path;
    ValueError when none is chosen)."""

    def __init__(self, parent, say: Callable[[str], None], fail: Callable[[str], None],
                 use_model: Callable[[str], None], current_model: Callable[[], str]) -> None:
        super().__init__()
        self._say, self._fail, self._use_model, self._current_model = say, fail, use_model, current_model
        self.training: TrainingProcess | None = None
        self.cancelled_run: tuple[str, Path] | None = None  # (dataset, run folder) the next Train resumes
        self.live: list[TrainingProcess] = []  # a plain list: stopped even after the Qt objects are gone
        self._progress = None
        self.timer = QTimer(parent)
        self.timer.timeout.connect(self.poll)
        self.epochs = _spin_box(1, 1000, DEFAULT_EPOCHS, "passes over the training split")
        self.image_size = _spin_box(64, 1024, DEFAULT_IMAGE_SIZE, "side of the model's square input, a multiple "
                                    f"of {SIZE_STEP} (the default model's is {DEFAULT_IMAGE_SIZE}); larger is "
                                    "slower", step=SIZE_STEP, suffix=" px")
        self.learning_rate = QLineEdit(DEFAULT_LR)
        self.learning_rate.setToolTip("peak learning rate (AdamW, one-cycle): 3e-4 suits fine-tuning on a few "
                                      "corrections, 1e-3 a model trained from scratch")
        self.batch_size = _spin_box(1, 256, DEFAULT_BATCH_SIZE, "annotations per step; lower it when memory runs "
                                    "out")
        self.fine_tune = QCheckBox("Fine-tune the current model")
        self.fine_tune.setChecked(True)
        self.fine_tune.setToolTip("start from the model in use (its lesion selector is kept; the lesion finder "
                                  "learns from your masks). Unchecked: a new model from scratch, which needs "
                                  "hundreds of annotations")
        settings = QGridLayout()
        for row, column, label, widget in ((0, 0, "Epochs", self.epochs), (0, 2, "Image size", self.image_size),
                                           (1, 0, "Learning rate", self.learning_rate),
                                           (1, 2, "Batch size", self.batch_size)):
            settings.addWidget(QLabel(label), row, column)
            settings.addWidget(widget, row, column + 1)
        self.train_button = QPushButton("Train on this dataset")
        self.cancel_button = QPushButton("Cancel training")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.start_over_button = QPushButton("Start over")
        self.start_over_button.setToolTip("Forget the cancelled run (its folder is kept): the next Train starts "
                                          "a new run")
        self.start_over_button.setEnabled(False)
        self.start_over_button.clicked.connect(self.start_over)
        self.use_model_button = QPushButton("Use new model")
        self.use_model_button.setEnabled(False)
        self.use_model_button.clicked.connect(self.use_trained_model)
        first, second = QHBoxLayout(), QHBoxLayout()
        for widget in (self.train_button, self.cancel_button):
            first.addWidget(widget)
        for widget in (self.start_over_button, self.use_model_button):
            second.addWidget(widget)
        self.addLayout(settings)
        self.addWidget(self.fine_tune)
        self.addLayout(first)
        self.addLayout(second)

    def settings_args(self, dataset: str) -> list[str]:
        """lsms-train's settings from the panel: epochs, image size, learning rate and batch size as shown,
        and ``--init-checkpoint`` the current model when "Fine-tune" is checked (its architecture then
        comes from it), else ``--preset lsms``. ValueError, saying what to type, for a learning rate that
        is not a number in (0, 1), an image size that is not a multiple of 32 or no model chosen."""
        size = self.image_size.value()
        if size % SIZE_STEP:
            raise ValueError(f"image size {size} px is not a multiple of {SIZE_STEP}: use e.g. "
                             f"{max(SIZE_STEP * 2, size // SIZE_STEP * SIZE_STEP)}")
        lr = parse_learning_rate(self.learning_rate.text())
        start = ["--init-checkpoint", self._current_model()] if self.fine_tune.isChecked() else ["--preset", "lsms"]
        return [*start, "--image-size", str(size), "--lr", f"{lr:g}", "--weight-decay", "0.05",
                "--augment", "--batch-size", str(self.batch_size.value()), "--epochs", str(self.epochs.value()),
                "--model-name", f"lsms-{Path(dataset).name}"]

    def train(self, dataset: str, extra_args: list[str] | None = None) -> TrainingProcess | None:
        """Start lsms-train on ``dataset`` as a separate process (or resume the run cancelled last on
        it); progress comes from its log."""
        if not dataset or not (Path(dataset) / "dataset.json").exists():
            self._fail("save some annotations into a dataset folder first")
            return None
        if self.training is not None and self.training.running():
            self._fail("a training run is already going: wait for it, or press Cancel training")
            return None
        resume = self.cancelled_run is not None and self.cancelled_run[0] == dataset
        if resume:
            run = self.cancelled_run[1]
        else:
            run = new_run_folder(dataset)
        try:
            args = extra_args if extra_args is not None else self.settings_args(dataset)
        except ValueError as error:
            self._fail(f"not started: {error}")
            return None
        from napari.utils import progress

        try:
            self.training = TrainingProcess(dataset, run, args)
        except OSError as error:
            self._fail(f"could not start lsms-train in {run}: {error}")
            return None
        self.live.append(self.training)
        self.cancelled_run = None
        self._set_idle_buttons(running=True)
        self._progress = progress(total=0, desc="lsms-train")
        self.timer.start(POLL_MS)
        self.use_model_button.setEnabled(False)
        if self.training.resumed:
            self._say(f"Resuming the cancelled run in {run} (its own settings) ...")
        else:
            self._say(f"Training in the background into {run} ...")
        return self.training

    def cancel(self) -> None:
        """Stop the run (SIGTERM, SIGKILL after a timeout); its folder stays resumable."""
        if self.training is None or not self.training.running():
            return
        self.training.cancel()
        self.cancel_button.setEnabled(False)
        self._say("Stopping lsms-train ...")
        self.poll()

    def start_over(self) -> None:
        """Forget the cancelled run: the next Train starts a new one."""
        if self.cancelled_run is not None:
            self._say(f"The next Train starts a new run; the cancelled one stays in {self.cancelled_run[1]}.")
        self.cancelled_run = None
        self._set_idle_buttons(running=False)

    def _set_idle_buttons(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        resumable = self.cancelled_run is not None
        self.train_button.setText("Resume training" if resumable else "Train on this dataset")
        self.start_over_button.setEnabled(resumable and not running)

    def poll(self) -> None:
        if self.training is None:
            return
        status = self.training.poll()
        if self._progress is not None:
            if status.epochs and self._progress.total != status.epochs:
                self._progress.total = status.epochs
            self._progress.n = status.epoch
            self._progress.set_description(status.text)
            self._progress.refresh()
        if not (status.finished or status.failed or status.cancelled):
            self._say(status.text + "".join(f". {note}" for note in status.notes))
            return
        self.timer.stop()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.live[:] = [t for t in self.live if t.running()]  # in place: the widget's close hook holds it
        run = self.training.run_dir
        if status.cancelled and self.training.resumable:
            self.cancelled_run = (str(self.training.dataset), run)
            self._say(f"{status.text}. The run is kept in {run}: Resume training continues it, Start over begins "
                      "a new one.")
        elif status.cancelled:
            self._say(f"{status.text}; it had saved nothing to resume from, so the next Train starts afresh.")
        else:
            (self._say if status.finished else self._fail)(
                status.text + "".join(f". {note}" for note in status.notes))
        self._set_idle_buttons(running=False)
        self.use_model_button.setEnabled(status.finished and self.training.best_checkpoint.exists())

    def shutdown(self) -> str | None:
        """Stop a run still going (the widget is closing); what happened, for a message, or None."""
        self.timer.stop()
        return stop_runs(self.live)

    def use_trained_model(self) -> None:
        if self.training is None or not self.training.best_checkpoint.exists():
            return
        self._use_model(str(self.training.best_checkpoint))


def _spin_box(low: int, high: int, value: int, tip: str, step: int = 1, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    box.setSuffix(suffix)
    box.setToolTip(tip)
    return box


def new_run_folder(dataset: str) -> Path:
    """``<dataset>-runs/<date-time>`` beside the dataset, with a suffix when that name is taken."""
    runs = Path(dataset).parent / f"{Path(dataset).name}-runs"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run, number = runs / stamp, 1
    while run.exists():
        number += 1
        run = runs / f"{stamp}-{number}"
    return run


def stop_runs(runs: list[TrainingProcess]) -> str | None:
    """Stop every run of ``runs`` still going (blocking, at most a few seconds each); a message naming
    the folders they can be resumed from, or None when none was running. No Qt: safe to call while
    the widget's Qt objects are being destroyed."""
    stopped = [run for run in runs if run.running()]
    for run in stopped:
        run.stop()
    runs.clear()
    if not stopped:
        return None
    resume = "; ".join(f"lsms-train {run.dataset} -o {run.run_dir} --resume" for run in stopped)
    return f"lsms-train was stopped with the widget (no run is left behind); to continue: {resume}"
