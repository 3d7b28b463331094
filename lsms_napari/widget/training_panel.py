"""The training row of the "Annotations" box: start lsms-train on the dataset, follow it, use its model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QSpinBox

from .training import TrainingProcess


class TrainingPanel(QHBoxLayout):
    """Epochs, "Train on this dataset", "Use new model". ``say``/``fail`` write the data status line;
    ``use_model(path)`` switches the model picker to a checkpoint."""

    def __init__(self, parent, say: Callable[[str], None], fail: Callable[[str], None],
                 use_model: Callable[[str], None]) -> None:
        super().__init__()
        self._say, self._fail, self._use_model = say, fail, use_model
        self.training: TrainingProcess | None = None
        self.timer = QTimer(parent)
        self.timer.timeout.connect(self.poll)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(15)
        self.epochs.setPrefix("epochs ")
        self.train_button = QPushButton("Train on this dataset")
        self.use_model_button = QPushButton("Use new model")
        self.use_model_button.setEnabled(False)
        self.use_model_button.clicked.connect(self.use_trained_model)
        self.addWidget(self.epochs)
        self.addWidget(self.train_button)
        self.addWidget(self.use_model_button)

    def train(self, dataset: str, extra_args: list[str] | None = None) -> TrainingProcess | None:
        """Start lsms-train on ``dataset`` as a separate process; progress comes from its log."""
        if not dataset or not (Path(dataset) / "dataset.json").exists():
            self._fail("save some annotations into a dataset folder first")
            return None
        if self.training is not None and self.training.process.poll() is None:
            self._fail("a training run is already going")
            return None
        run = Path(dataset).parent / f"{Path(dataset).name}-runs" / time.strftime("%Y%m%d-%H%M%S")
        args = extra_args if extra_args is not None else [
            "--preset", "lsms", "--image-size", "256", "--lr", "1e-3", "--weight-decay", "0.05", "--augment",
            "--batch-size", "8", "--epochs", str(self.epochs.value()), "--model-name", f"lsms-{Path(dataset).name}"]
        from napari.utils import progress

        self.training = TrainingProcess(dataset, run, args)
        self._progress = progress(total=0, desc="lsms-train")
        self.timer.start(1000)
        self.use_model_button.setEnabled(False)
        self._say(f"Training in the background into {run} ...")
        return self.training

    def poll(self) -> None:
        if self.training is None:
            return
        status = self.training.poll()
        if status.epochs and self._progress.total != status.epochs:
            self._progress.total = status.epochs
        self._progress.n = status.epoch
        self._progress.set_description(status.text)
        self._progress.refresh()
        self._say(status.text)
        if status.finished or status.failed:
            self.timer.stop()
            self._progress.close()
            self.use_model_button.setEnabled(status.finished and self.training.best_checkpoint.exists())

    def use_trained_model(self) -> None:
        if self.training is None or not self.training.best_checkpoint.exists():
            return
        self._use_model(str(self.training.best_checkpoint))
