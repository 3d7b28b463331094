"""The "Model" box: a model chosen by the image (automatic), a shipped model by name, or a checkpoint file;
what a header-less image is (for the automatic choice); and the device."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QGroupBox

from lsms_core.models import AUTO, SHIPPED, ModelChoice, checkpoint_name, resolve_auto

from .path_field import path_field

AUTOMATIC = "automatic (by image)"
DEFAULT_MODEL = SHIPPED["liver"].title
CHECKPOINT_FILE = "checkpoint file..."
SHIPPED_BY_TITLE = {model.title: checkpoint_name(name) for name, model in SHIPPED.items()}
KIND_TITLES = {"as its header says": "auto", "X-ray": "xray", "CT": "ct"}  # lsms_core.models.IMAGE_KINDS


class ModelPicker(QGroupBox):
    def __init__(self) -> None:
        super().__init__("Model")
        form = QFormLayout(self)
        self.model_combo = QComboBox()
        self.model_combo.addItems([AUTOMATIC, *SHIPPED_BY_TITLE, CHECKPOINT_FILE])
        self.model_combo.setToolTip("automatic: a radiograph gets the chest X-ray model, a chest CT the lung CT model, "
                                    "other CT the liver model (the status line says which ran and why)")
        form.addRow("Model", self.model_combo)
        self.kind_combo = QComboBox()
        self.kind_combo.addItems(list(KIND_TITLES))
        self.kind_combo.setToolTip("what an image without a DICOM header (PNG, JPEG, TIFF) is, for the automatic "
                                   "choice; a DICOM file's own Modality wins")
        form.addRow("Image is", self.kind_combo)
        path_row, self.checkpoint_path = path_field(".safetensors written by lsms-train", self._browse_checkpoint)
        form.addRow("Checkpoint", path_row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        form.addRow("Device", self.device_combo)

    def checkpoint(self) -> str:
        """"auto", a shipped model's name, or the checkpoint file's path; ValueError when a file is wanted but not
        given."""
        text = self.model_combo.currentText()
        if text == AUTOMATIC:
            return AUTO
        if text in SHIPPED_BY_TITLE:
            return SHIPPED_BY_TITLE[text]
        path = self.checkpoint_path.text().strip()
        if not path:
            raise ValueError("choose a checkpoint file, or pick a shipped model")
        return path

    def checkpoint_for(self, pixels, hounsfield: bool, modality: str, body_part: str) -> tuple[str, ModelChoice | None]:
        """The checkpoint for an image: the automatic choice (and why) or the model picked by hand (choice None)."""
        return resolve_auto(self.checkpoint(), pixels, hounsfield, modality, body_part,
                            KIND_TITLES[self.kind_combo.currentText()])

    def device(self) -> str:
        return self.device_combo.currentText()

    def use_checkpoint(self, path: str) -> None:
        self.checkpoint_path.setText(path)
        self.model_combo.setCurrentText(CHECKPOINT_FILE)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "LSMS checkpoint", "", "safetensors (*.safetensors)")
        if path:
            self.use_checkpoint(path)
