"""The "Referring Lesion Segment" dock widget: type an expression, get that lesion as Labels.

Layout and handlers only: the model runs in a napari worker thread (WidgetSession), saving
goes through lsms_core's writer in a worker, training is a separate process. The viewer never
waits on any of them.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
                            QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from lsms_core.inference import ExpressionError, clean_expression
from lsms_core.measure import measure_mask
from lsms_core.windows import WINDOW_PRESETS, Window, window_from_limits

from ..layers import SourceInfo
from . import expression as ex
from .saving import save_annotation
from .session import Proposal, SegmentRequest, WidgetSession, pixels_sha
from .training import TrainingProcess

GO_TIMEOUT_S = 10.0  # a worker waits at most this long for the event loop to let it go


@dataclass
class Outcome:
    """What a worker hands back: a value, or the message of the error that stopped it."""

    value: Any = None
    error: str | None = None


def guarded(func, *args, go: threading.Event | None = None) -> Outcome:
    """Run ``func`` in a worker without ever raising: errors come back as a message, so the GUI
    shows one clear line instead of a traceback. ``go``: wait for it first (see start_worker)."""
    if go is not None:
        go.wait(GO_TIMEOUT_S)
    try:
        return Outcome(func(*args))
    except Exception as error:  # noqa: BLE001 (every failure must reach the user as a message)
        return Outcome(error=str(error) or type(error).__name__)


def start_worker(func, *args, description: str, on_value, on_error, on_finished=None):
    """Run ``guarded(func, *args)`` in a napari worker; returns the (running) worker.

    ``on_finished(worker)`` is called once it ended, whatever happened. The work itself begins
    once control is back in the event loop, so whoever gets the worker can still connect to its
    signals: work that fails at once would otherwise finish before anyone listened."""
    go = threading.Event()
    worker = create_worker(guarded, func, *args, go=go, _progress={"desc": description})
    # "started" is delivered in the GUI thread, through its event loop: only then does the work begin.
    # (Not QTimer.singleShot: PySide6 6.12 loses a reference to None on each call, and Python aborts.)
    worker.started.connect(lambda: go.set())
    worker.returned.connect(lambda outcome: on_error(outcome.error) if outcome.error else on_value(outcome.value))
    if on_finished is not None:
        worker.finished.connect(lambda: on_finished(worker))
    worker.start()
    return worker


DEFAULT_MODEL = "default model (lsms-reflits)"
CHECKPOINT_FILE = "checkpoint file..."
FILE_WINDOW = "file's own window"


class ReferringLesionSegmentWidget(QWidget):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = WidgetSession()
        self._worker = None  # the Segment run in progress (None when idle or cancelled)
        self._saving = False  # a save is in progress
        self._request_id = 0
        self._training: TrainingProcess | None = None
        self._train_timer = QTimer(self)
        self._train_timer.timeout.connect(self._poll_training)
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._refresh_layers()

    # --- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox()
        form.addRow("Image", self.image_combo)
        self.window_combo = QComboBox()
        self.window_combo.addItems([FILE_WINDOW, *WINDOW_PRESETS])
        self.window_combo.currentTextChanged.connect(self._apply_window)
        form.addRow("Window", self.window_combo)
        self.expression = QLineEdit()
        self.expression.setPlaceholderText("e.g. the largest hypodense lesion in the right lobe")
        self.expression.returnPressed.connect(self.segment)
        form.addRow("Expression", self.expression)
        layout.addLayout(form)

        fields = QGroupBox("Structured description (optional, composes the expression)")
        fields_form = QFormLayout(fields)
        self.field_combos: dict[str, QComboBox] = {}
        for key, label, choices in (("lesion_type", "Lesion type", ex.LESION_TYPES),
                                    ("location", "Segment / lobe", ex.LOCATIONS), ("size", "Size", ex.SIZES),
                                    ("shape", "Shape", ex.SHAPES), ("boundary", "Boundary", ex.BOUNDARIES),
                                    ("enhancement", "Enhancement", ex.ENHANCEMENTS)):
            combo = QComboBox()
            combo.addItems(list(choices))
            fields_form.addRow(label, combo)
            self.field_combos[key] = combo
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(0, 500)
        self.diameter.setSuffix(" mm")
        self.diameter.setSpecialValueText("-")
        fields_form.addRow("Diameter", self.diameter)
        layout.addWidget(fields)

        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        self.model_combo = QComboBox()
        self.model_combo.addItems([DEFAULT_MODEL, CHECKPOINT_FILE])
        model_form.addRow("Model", self.model_combo)
        path_row = QHBoxLayout()
        self.checkpoint_path = QLineEdit()
        self.checkpoint_path.setPlaceholderText(".safetensors written by lsms-train")
        browse = QPushButton("...")
        browse.clicked.connect(self._browse_checkpoint)
        path_row.addWidget(self.checkpoint_path)
        path_row.addWidget(browse)
        model_form.addRow("Checkpoint", path_row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        model_form.addRow("Device", self.device_combo)
        layout.addWidget(model_box)

        buttons = QHBoxLayout()
        self.segment_button = QPushButton("Segment")
        self.segment_button.clicked.connect(self.segment)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.status = QLabel("Type what you want segmented and press Segment.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.measurements = QLabel("")
        self.measurements.setWordWrap(True)
        layout.addWidget(self.measurements)

        data_box = QGroupBox("Annotations")
        data_layout = QVBoxLayout(data_box)
        dataset_row = QHBoxLayout()
        self.dataset_path = QLineEdit()
        self.dataset_path.setPlaceholderText("dataset folder (created on first save)")
        dataset_browse = QPushButton("...")
        dataset_browse.clicked.connect(self._browse_dataset)
        dataset_row.addWidget(self.dataset_path)
        dataset_row.addWidget(dataset_browse)
        data_layout.addLayout(dataset_row)
        self.include_identifiers = QCheckBox("Store patient identifiers")
        self.include_identifiers.setToolTip(
            "Off (the default): annotations hold only salted pseudonymous keys, never a name or an ID.\n"
            "On: each annotation line also stores, under \"identifiers\", the source DICOM's PatientName,\n"
            "PatientID, PatientBirthDate, PatientSex, AccessionNumber, InstitutionName, StudyDate and\n"
            "Study/Series/SOP Instance UIDs, verbatim. The dataset is then identifiable: share it only\n"
            "where patient data may go.")
        data_layout.addWidget(self.include_identifiers)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save annotation")
        self.save_button.clicked.connect(self.save)
        self.export_button = QPushButton("Export LViT...")
        self.export_button.clicked.connect(self._choose_export)
        row.addWidget(self.save_button)
        row.addWidget(self.export_button)
        data_layout.addLayout(row)
        train_row = QHBoxLayout()
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(15)
        self.epochs.setPrefix("epochs ")
        self.train_button = QPushButton("Train on this dataset")
        self.train_button.clicked.connect(self.train)
        self.use_model_button = QPushButton("Use new model")
        self.use_model_button.setEnabled(False)
        self.use_model_button.clicked.connect(self.use_trained_model)
        train_row.addWidget(self.epochs)
        train_row.addWidget(self.train_button)
        train_row.addWidget(self.use_model_button)
        data_layout.addLayout(train_row)
        self.data_status = QLabel("")
        self.data_status.setWordWrap(True)
        data_layout.addWidget(self.data_status)
        layout.addWidget(data_box)
        layout.addStretch(1)

    # --- layers -------------------------------------------------------------------------------
    def _image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb]

    def _refresh_layers(self, event=None) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)

    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        return next((layer for layer in self._image_layers() if layer.name == name), None)

    def current_slice(self, layer: Image) -> tuple[np.ndarray, int | None]:
        """(pixels (H,W), slice index or None): the 2-D image, or the displayed slice of a stack."""
        if layer.ndim == 2:
            return np.asarray(layer.data), None
        if layer.ndim != 3:
            raise ValueError(f"{layer.name} has {layer.ndim} dimensions; pick a 2-D image or a stack of slices")
        index = int(round(float(layer.world_to_data(self.viewer.dims.point)[0])))
        index = min(max(index, 0), layer.data.shape[0] - 1)
        return np.asarray(layer.data[index]), index

    def _apply_window(self, name: str) -> None:
        layer = self.image_layer()
        if layer is None:
            return
        if name == FILE_WINDOW:
            info = SourceInfo.of(layer)
            if info.window:
                layer.contrast_limits = (info.window[0] - info.window[1] / 2, info.window[0] + info.window[1] / 2)
            return
        layer.contrast_limits = WINDOW_PRESETS[name].limits

    def current_window(self, layer: Image) -> Window:
        """The window the user is looking at (a preset's name when it matches one)."""
        low, high = (float(v) for v in layer.contrast_limits)
        for preset in WINDOW_PRESETS.values():
            if np.allclose(preset.limits, (low, high)):
                return preset
        return window_from_limits(low, high, "file" if self.window_combo.currentText() == FILE_WINDOW else "custom")

    # --- model --------------------------------------------------------------------------------
    def checkpoint(self) -> str:
        if self.model_combo.currentText() == DEFAULT_MODEL:
            return "default"
        path = self.checkpoint_path.text().strip()
        if not path:
            raise ValueError("choose a checkpoint file, or pick the default model")
        return path

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "LSMS checkpoint", "", "safetensors (*.safetensors)")
        if path:
            self.checkpoint_path.setText(path)
            self.model_combo.setCurrentText(CHECKPOINT_FILE)

    def preload_model(self) -> None:
        """Load the chosen model in the background so the first Segment is fast."""
        checkpoint, device = self.checkpoint(), self.device_combo.currentText()
        return start_worker(self.session.segmenter, checkpoint, device, description="Loading LSMS model",
                            on_value=lambda _: self._say("Model ready."),
                            on_error=lambda error: self._fail(f"could not load the model: {error}"))

    # --- segment ------------------------------------------------------------------------------
    def fields(self) -> dict:
        values = {key: combo.currentText() for key, combo in self.field_combos.items()}
        values["diameter_mm"] = self.diameter.value() or None
        return {k: v for k, v in values.items() if v not in ("", None)}

    def segment(self) -> None:
        if self._worker is not None:  # e.g. Return pressed in the expression while a run goes on
            self._say("Still segmenting: wait for this run to finish, or press Cancel before starting another.")
            return
        layer = self.image_layer()
        if layer is None:
            self._fail("open an image first (File > Open, or File > Open Sample > lsms-napari)")
            return
        fields = self.fields()
        try:
            text = clean_expression(ex.compose_expression(self.expression.text(),
                                                          fields if not self.expression.text().strip() else {}))
            pixels, index = self.current_slice(layer)
            checkpoint = self.checkpoint()
        except (ExpressionError, ValueError) as error:
            self._fail(str(error))
            return
        info = SourceInfo.of(layer)
        kinds = ex.expression_kinds(fields)
        request = SegmentRequest(pixels, text, info.hounsfield, layer.name, index, fields, kinds, checkpoint,
                                 self.device_combo.currentText())
        self._request_id += 1
        request_id = self._request_id
        loading = not self.session.is_loaded(checkpoint, request.device)
        self._say(("Loading the model, then segmenting" if loading else "Segmenting") + f' "{text}"...')
        self.segment_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._worker = start_worker(self.session.run, request, description=f"Segment: {text[:40]}",
                                    on_value=lambda proposal: self._on_proposal(proposal, request_id),
                                    on_error=lambda error: self._on_error(error, request_id),
                                    on_finished=lambda worker: self._on_finished(request_id))

    def cancel(self) -> None:
        """Forget the running request: its result, when it comes, is discarded."""
        self._request_id += 1
        if self._worker is not None:
            self._worker.quit()
        self._say("Cancelled.")
        self._on_finished()

    def _on_finished(self, request_id: int | None = None) -> None:
        """Segment is free again: run ``request_id`` ended (or, with None, was cancelled)."""
        if request_id is not None and request_id != self._request_id:
            return  # a cancelled run ending late: the buttons belong to the current one
        self._worker = None
        self.segment_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_error(self, error: str, request_id: int) -> None:
        if request_id == self._request_id:
            self._on_finished(request_id)
            self._fail(f"segmentation failed: {error}")

    def _on_proposal(self, proposal: Proposal, request_id: int) -> Labels | None:
        if request_id != self._request_id:
            return None  # cancelled, or superseded by a newer request
        self._on_finished(request_id)  # free before the layer appears: a click right after it is taken
        request = proposal.request
        source = next((l for l in self._image_layers() if l.name == request.source_layer), None)
        if source is None:
            self._fail(f'the image "{request.source_layer}" was closed while segmenting; the result is discarded')
            return None
        index = request.slice_index
        if source.data.ndim != (2 if index is None else 3) or pixels_sha(
                source.data if index is None else source.data[index]) != proposal.image_sha:
            self._fail(f'the image "{source.name}" changed while segmenting (replaced or edited); the result is '
                       "discarded: press Segment again")
            return None
        data = np.zeros(source.data.shape, dtype=np.uint8)
        if request.slice_index is None:
            data[proposal.mask] = 1
        else:
            data[request.slice_index][proposal.mask] = 1
        key = uuid.uuid4().hex
        name = request.text if len(request.text) <= 60 else request.text[:57] + "..."
        labels = self.viewer.add_labels(data, name=name, scale=source.scale, translate=source.translate,
                                        metadata={"lsms_proposal": key, "lsms_source": source.name,
                                                  "lsms_slice": request.slice_index})
        self.session.proposals[key] = proposal
        labels.events.paint.connect(lambda event: self.update_measurements())
        labels.events.data.connect(lambda event: self.update_measurements())
        self.viewer.layers.selection.active = labels
        found = "no finding" if not proposal.mask.any() else f"{int(proposal.mask.sum())} px"
        moved = self.image_combo.currentText() != source.name  # another image was picked meanwhile
        where = f' on "{source.name}", the image Segment ran on' if moved else ""
        self._say(f'"{request.text}": {found}{where} in {proposal.seconds:.2f} s ({proposal.model.get("name")}). '
                  "Correct it with the brush, then Save annotation." + "".join(f" Note: {n}." for n in proposal.notes))
        for note in proposal.notes:
            show_warning(note)
        self.update_measurements()
        return labels

    # --- measurements -------------------------------------------------------------------------
    def _on_active_layer(self, event=None) -> None:
        self.update_measurements()

    def active_proposal(self) -> tuple[Labels, Proposal] | None:
        layer = self.viewer.layers.selection.active
        if isinstance(layer, Labels) and layer.metadata.get("lsms_proposal") in self.session.proposals:
            return layer, self.session.proposals[layer.metadata["lsms_proposal"]]
        return None

    def _labels_slice(self, labels: Labels, proposal: Proposal) -> np.ndarray:
        index = proposal.request.slice_index
        return np.asarray(labels.data if index is None else labels.data[index]) > 0

    def update_measurements(self) -> str:
        found = self.active_proposal()
        if found is None:
            self.measurements.setText("")
            return ""
        labels, proposal = found
        source = next((l for l in self._image_layers() if l.name == proposal.request.source_layer), None)
        info = SourceInfo.of(source) if source is not None else SourceInfo()
        text = measure_mask(self._labels_slice(labels, proposal), info.spacing_mm, proposal.request.pixels,
                            info.hounsfield).summary()
        self.measurements.setText(f"{labels.name}: {text}")
        return text

    # --- save / export ------------------------------------------------------------------------
    def _browse_dataset(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Annotation dataset folder")
        if path:
            self.dataset_path.setText(path)

    def save(self):
        """Save the selected Labels layer (a corrected proposal) in a worker; returns the worker."""
        found = self.active_proposal()
        dataset = self.dataset_path.text().strip()
        if self._saving:
            self._say_data("Still saving the previous annotation: wait a moment, then save again.")
            return None
        if found is None:
            self._fail_data("select a Labels layer made by Segment (the mask to save)")
            return None
        if not dataset:
            self._fail_data("choose a dataset folder first")
            return None
        labels, proposal = found
        source = next((l for l in self._image_layers() if l.name == proposal.request.source_layer), None)
        if source is None:
            self._fail_data(f'the image "{proposal.request.source_layer}" is closed: nothing to attach the mask to')
            return None
        index = proposal.request.slice_index
        pixels = np.asarray(source.data if index is None else source.data[index])
        mask = self._labels_slice(labels, proposal).copy()
        self._saving = True
        return start_worker(
            save_annotation, dataset, proposal, mask, pixels, SourceInfo.of(source), self.current_window(source),
            self.include_identifiers.isChecked(), description="Saving annotation",
            on_value=lambda record: self._on_saved(dataset, record),
            on_error=lambda error: self._on_saved(dataset, error=error),
            on_finished=lambda worker: setattr(self, "_saving", False))

    def _on_saved(self, dataset: str, record: dict | None = None, error: str | None = None) -> None:
        self._saving = False  # free before the message shows: a Save right after it is taken
        if error is not None:
            self._fail_data(f"not saved: {error}")
            return
        self._say_data(f"Saved {record['id']} ({record['split']}), edit Dice {record['provenance']['edit_dice']}, "
                       f"to {dataset}" + (" with patient identifiers." if "identifiers" in record else "."))

    def _choose_export(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export to an LViT layout (empty folder)")
        if path:
            self.export_lvit(path)

    def export_lvit(self, output: str):
        from lsms_core.dataset.lvit import export_lvit

        dataset = self.dataset_path.text().strip()
        if not dataset:
            self._fail_data("choose a dataset folder first")
            return None
        return start_worker(export_lvit, dataset, output, description="Exporting to LViT layout",
                            on_value=lambda counts: self._say_data(f"Exported {counts} to {output}."),
                            on_error=lambda error: self._fail_data(f"export failed: {error}"))

    # --- training -----------------------------------------------------------------------------
    def train(self, extra_args: list[str] | None = None) -> TrainingProcess | None:
        """Start lsms-train on the dataset as a separate process; progress comes from its log."""
        dataset = self.dataset_path.text().strip()
        if not dataset or not (Path(dataset) / "dataset.json").exists():
            self._fail_data("save some annotations into a dataset folder first")
            return None
        if self._training is not None and self._training.process.poll() is None:
            self._fail_data("a training run is already going")
            return None
        run = Path(dataset).parent / f"{Path(dataset).name}-runs" / time.strftime("%Y%m%d-%H%M%S")
        args = extra_args if extra_args is not None else [
            "--preset", "lsms", "--image-size", "256", "--lr", "1e-3", "--weight-decay", "0.05", "--augment",
            "--batch-size", "8", "--epochs", str(self.epochs.value()), "--model-name", f"lsms-{Path(dataset).name}"]
        from napari.utils import progress

        self._training = TrainingProcess(dataset, run, args)
        self._train_progress = progress(total=0, desc="lsms-train")
        self._train_timer.start(1000)
        self.use_model_button.setEnabled(False)
        self._say_data(f"Training in the background into {run} ...")
        return self._training

    def _poll_training(self) -> None:
        if self._training is None:
            return
        status = self._training.poll()
        if status.epochs and self._train_progress.total != status.epochs:
            self._train_progress.total = status.epochs
        self._train_progress.n = status.epoch
        self._train_progress.set_description(status.text)
        self._train_progress.refresh()
        self._say_data(status.text)
        if status.finished or status.failed:
            self._train_timer.stop()
            self._train_progress.close()
            self.use_model_button.setEnabled(status.finished and self._training.best_checkpoint.exists())

    def use_trained_model(self) -> None:
        if self._training is None or not self._training.best_checkpoint.exists():
            return
        self.checkpoint_path.setText(str(self._training.best_checkpoint))
        self.model_combo.setCurrentText(CHECKPOINT_FILE)
        self._say(f"Using the new model {self._training.best_checkpoint}.")

    # --- messages -----------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _fail(self, text: str) -> None:
        self.status.setText(text)
        show_error(text)

    def _say_data(self, text: str) -> None:
        self.data_status.setText(text)

    def _fail_data(self, text: str) -> None:
        self.data_status.setText(text)
        show_error(text)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self._training is not None:
            show_info("lsms-train keeps running in the background; resume it later with --resume")
        self.session.close()
        super().closeEvent(event)
