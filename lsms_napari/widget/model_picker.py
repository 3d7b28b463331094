"""The "Model" box: the default model or a checkpoint file, and the device."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QGroupBox

from .path_field import path_field

DEFAULT_MODEL = "default model (lsms-reflits)"
CHECKPOINT_FILE = "checkpoint file..."


class ModelPicker(QGroupBox):
    def __init__(self) -> None:
        super().__init__("Model")
        form = QFormLayout(self)
        self.model_combo = QComboBox()
        self.model_combo.addItems([DEFAULT_MODEL, CHECKPOINT_FILE])
        form.addRow("Model", self.model_combo)
        path_row, self.checkpoint_path = path_field(".safetensors written by lsms-train", self._browse_checkpoint)
        form.addRow("Checkpoint", path_row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        form.addRow("Device", self.device_combo)

    def checkpoint(self) -> str:
        """"default", or the checkpoint file's path; ValueError when a file is wanted but not given."""
        if self.model_combo.currentText() == DEFAULT_MODEL:
            return "default"
        path = self.checkpoint_path.text().strip()
        if not path:
            raise ValueError("choose a checkpoint file, or pick the default model")
        return path

    def device(self) -> str:
        return self.device_combo.currentText()

    def use_checkpoint(self, path: str) -> None:
        self.checkpoint_path.setText(path)
        self.model_combo.setCurrentText(CHECKPOINT_FILE)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "LSMS checkpoint", "", "safetensors (*.safetensors)")
        if path:
            self.use_checkpoint(path)
