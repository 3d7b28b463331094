"""The "Referring Lesion Segment" dock widget: type an expression, get that lesion as Labels.

Layout and the Segment / Save handlers; each other job has its module: image_picker.py (image,
slice, window), fields_box.py (structured description), model_picker.py (model, device),
measurements.py, training_panel.py (lsms-train), workers.py (napari workers), session.py (warm
model, proposals), save_target.py (what a Labels layer is saved as), save_choice.py (update or
new?), saving.py (writer calls), splits_row.py (split counts, the patient's split), domain_guard.py
(the once-per-image warning when an image is outside the model's domain), matching.py (Next match),
prompting.py and prompt_layers.py (click and box prompts, Refine). The models run in a napari worker thread
(WidgetSession), saving goes through lsms_core's writer in a worker, training is a separate
process. The viewer never waits on any of them.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (QCheckBox, QFileDialog, QFormLayout, QFrame, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                            QPushButton, QScrollArea, QVBoxLayout, QWidget)

from lsms_core.inference import ExpressionError
from lsms_core.windows import Window

from ..layers import SourceInfo
from . import expression as ex
from . import matching, save_choice
from .domain_guard import DomainGuard
from .fields_box import StructuredFields
from .following import FOLLOWED, FollowPanel
from .image_picker import FILE_WINDOW, ImagePicker  # noqa: F401 - FILE_WINDOW re-exported
from .mask_export import EXPORT_FILTERS, export_mask, mask_description, source_volume
from .measurements import MeasurementsLabel
from .model_picker import CHECKPOINT_FILE, DEFAULT_MODEL, ModelPicker  # noqa: F401 - re-exported
from .path_field import path_field
from .prompting import PromptPanel
from .save_target import hand_drawn_image, mask_of, save_target
from .saving import SaveResult, save_annotation
from .session import Proposal, SegmentRequest, WidgetSession, pixels_sha
from .splits_row import SplitsRow
from .training import TrainingProcess
from .training_panel import TrainingPanel, stop_runs
from .workers import GO_TIMEOUT_S, Outcome, guarded, start_worker  # noqa: F401 - re-exported


class VerticalScrollArea(QScrollArea):
    """A scroll area as wide as its panel needs (with room for the vertical scroll bar): it scrolls
    vertically only, and never clips the panel's right edge (the width is asked when the dock lays out,
    after napari's style has set fonts and paddings)."""

    def _width(self) -> int:
        inner = self.widget().minimumSizeHint().width() if self.widget() is not None else 0
        return inner + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(self._width(), super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(max(self._width(), super().sizeHint().width()), super().sizeHint().height())

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        # napari's dock takes the width hinted when the widget was added, before the style was applied: a
        # minimum width set now makes the dock (and the main window's layout) give the panel its width
        self.setMinimumWidth(self._width())
        super().showEvent(event)


def unbind_keys(viewer, keys) -> None:
    """Remove the widget's shortcuts from ``viewer`` (nothing happens for keys no longer bound)."""
    for key in keys:
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError, RuntimeError):
            pass  # not bound any more, or the viewer is being torn down


class ReferringLesionSegmentWidget(QWidget):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = WidgetSession()
        self._worker = None  # the Segment run in progress (None when idle or cancelled)
        self._saving = False  # a save is in progress
        self._request_id = 0
        self._composed = ""  # the expression the structured fields wrote into the box last
        self._fields_note = ""  # said with the result when Segment left the structured fields out
        self._model_note = ""  # which shipped model the automatic choice took for the image, and why
        self._domain_note = ""  # said with the result when the image is outside the model's domain (once per image)
        self.domain_guard = DomainGuard()
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.inserted.connect(self._watch_labels)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._forget_closed_proposals)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._refresh_layers()
        for layer in self.viewer.layers:  # layers opened before the widget (e.g. a sample's drawn outline)
            self._watch(layer)
        self.update_measurements()  # the layer already selected is measured too
        self._bind_shortcuts()

    # --- shortcuts ----------------------------------------------------------------------------
    def shortcuts(self) -> dict[str, tuple[str, object]]:
        """Key -> (what it does, handler): bound on the viewer (the canvas has the focus), listed in
        docs/plugin.md. None of them is one of napari's own."""
        return {"Shift-S": ("Segment the expression", self.segment),
                "Shift-Enter": ("Save annotation (the selected Labels layer)", self.save),
                "Shift-C": ("Next prompt mode: + click, \u2212 click, box, off", self.prompts.next_mode),
                "Shift-R": ("Refine the selected text result with LiteMedSAM", self.prompts.refine),
                "Shift-N": ("Next match: the next lesion the words rank, on the selected Segment result",
                            self.next_match)}

    def _bind_shortcuts(self) -> None:
        shortcuts = self.shortcuts()
        self._bound = list(shortcuts)
        for key, (_, handler) in shortcuts.items():
            self.viewer.bind_key(key, lambda viewer, handler=handler: handler(), overwrite=True)
        # A dock removed without being closed is deleted all the same: its keys must not outlive it.
        self.destroyed.connect(lambda *_, viewer=self.viewer, keys=tuple(self._bound): unbind_keys(viewer, keys))

    def _unbind_shortcuts(self) -> None:
        unbind_keys(self.viewer, self._bound)
        self._bound = []

    # --- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        # Everything sits in a scroll area: in a short dock (a laptop screen) the panel scrolls instead of
        # squeezing the training settings' rows into each other.
        content = QWidget()
        scroll = VerticalScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        form = QFormLayout()
        self.images = ImagePicker(self.viewer)
        self.image_combo, self.window_combo = self.images.image_combo, self.images.window_combo
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        form.addRow("Image", self.image_combo)
        form.addRow("Window", self.window_combo)
        self.expression = QLineEdit()
        self.expression.setPlaceholderText("e.g. the largest hypodense lesion in the right lobe")
        self.expression.returnPressed.connect(self.segment)
        form.addRow("Expression", self.expression)
        layout.addLayout(form)

        self.structured = StructuredFields()
        self.field_combos, self.diameter = self.structured.field_combos, self.structured.diameter
        self.structured.changed.connect(self._compose_into_box)
        layout.addWidget(self.structured)

        self.model_picker = ModelPicker()
        self.model_combo = self.model_picker.model_combo
        self.checkpoint_path = self.model_picker.checkpoint_path
        self.device_combo = self.model_picker.device_combo
        layout.addWidget(self.model_picker)

        buttons = QHBoxLayout()
        self.segment_button = QPushButton("Segment")
        self.segment_button.clicked.connect(self.segment)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.next_match_button = QPushButton("Next match")
        self.next_match_button.setToolTip("Show the next lesion the words rank on the selected Segment result, and "
                                          "round again to the answer (Shift-N)")
        self.next_match_button.clicked.connect(self.next_match)
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.next_match_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.follow_panel = FollowPanel(self)
        self.follow_button, self.stop_follow_button = self.follow_panel.follow_button, self.follow_panel.stop_button
        layout.addWidget(self.follow_panel)
        self.status = QLabel("Type what you want segmented and press Segment.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.measurements = MeasurementsLabel()
        layout.addWidget(self.measurements)
        self.prompts = PromptPanel(self)
        self.positive_button, self.negative_button = self.prompts.positive_button, self.prompts.negative_button
        self.box_button, self.refine_button = self.prompts.box_button, self.prompts.refine_button
        layout.addWidget(self.prompts)

        data_box = QGroupBox("Annotations")
        data_layout = QVBoxLayout(data_box)
        dataset_row, self.dataset_path = path_field("dataset folder (created on first save)", self._browse_dataset)
        data_layout.addLayout(dataset_row)
        self.include_identifiers = QCheckBox("Store patient identifiers")
        self.include_identifiers.setToolTip(
            "Off (the default): annotations hold only salted pseudonymous keys, never a name or an ID.\n"
            "On: each annotation line also stores, under \"identifiers\", the source DICOM's PatientName,\n"
            "PatientID, PatientBirthDate, PatientSex, AccessionNumber, InstitutionName, StudyDate and\n"
            "Study/Series/SOP Instance UIDs, verbatim. The dataset is then identifiable: share it only\n"
            "where patient data may go.")
        data_layout.addWidget(self.include_identifiers)
        self.splits = SplitsRow(self, self.dataset_path)
        self.split_combo, self.split_counts = self.splits.split_combo, self.splits.counts
        data_layout.addLayout(self.splits)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save annotation")
        self.save_button.clicked.connect(self.save)
        self.export_button = QPushButton("Export LViT...")
        self.export_button.clicked.connect(self._choose_export)
        self.export_mask_button = QPushButton("Export mask...")
        self.export_mask_button.setToolTip("The selected mask as NIfTI (.nii.gz, in the image's geometry) or DICOM SEG "
                                           "(.dcm, referencing the DICOM series; identifiers as the box above says)")
        self.export_mask_button.clicked.connect(self._choose_mask_export)
        row.addWidget(self.save_button)
        row.addWidget(self.export_button)
        row.addWidget(self.export_mask_button)
        data_layout.addLayout(row)
        self.training_panel = TrainingPanel(self, self._say_data, self._fail_data, self._use_model,
                                            self.checkpoint)
        self.training_panel.train_button.clicked.connect(lambda: self.train())
        self.epochs, self.train_button = self.training_panel.epochs, self.training_panel.train_button
        self.image_size, self.learning_rate = self.training_panel.image_size, self.training_panel.learning_rate
        self.batch_size = self.training_panel.batch_size
        self.use_model_button = self.training_panel.use_model_button
        self.cancel_training_button = self.training_panel.cancel_button
        data_layout.addLayout(self.training_panel)
        # The viewer's window deletes its dock widgets without closing them: a run still going is stopped
        # then too (the hook holds the panel's plain list of runs, not the Qt objects being destroyed).
        self.destroyed.connect(lambda *_, runs=self.training_panel.live: stop_runs(runs))
        self.data_status = QLabel("")
        self.data_status.setWordWrap(True)
        data_layout.addWidget(self.data_status)
        layout.addWidget(data_box)
        layout.addStretch(1)

    # --- layers -------------------------------------------------------------------------------
    def _image_layers(self) -> list[Image]:
        return self.images.image_layers()

    def _refresh_layers(self, event=None) -> None:
        self.images.refresh(event)

    def _watch_labels(self, event=None) -> None:
        self._watch(getattr(event, "value", None))

    def _watch(self, layer) -> None:
        """Measure a Labels layer again whenever it is painted or its data replaced (Segment's or drawn)."""
        if isinstance(layer, Labels):
            layer.events.paint.connect(lambda event: self.update_measurements())
            layer.events.data.connect(lambda event: self.update_measurements())

    def _on_image_changed(self, name: str) -> None:
        """Another image picked: the status spoke of the previous one."""
        self._say("")

    def _forget_closed_proposals(self, event=None) -> None:
        """A closed Labels layer's proposal (and the slice it holds) is never needed again."""
        self.session.proposals.keep_only(layer.metadata.get("lsms_proposal") for layer in self.viewer.layers
                                         if isinstance(layer, Labels))

    def image_layer(self) -> Image | None:
        return self.images.image_layer()

    def current_slice(self, layer: Image) -> tuple[np.ndarray, int | None]:
        """(pixels (H,W), slice index or None): the 2-D image, or the displayed slice of a stack."""
        return self.images.current_slice(layer)

    def current_window(self, layer: Image) -> Window:
        """The window the user is looking at (a preset's name when it matches one)."""
        return self.images.current_window(layer)

    # --- model --------------------------------------------------------------------------------
    def checkpoint(self) -> str:
        """The checkpoint the current image gets: the picked model, or for the automatic choice the shipped model
        for it (lsms_core.models); ValueError when a checkpoint file is wanted but not given."""
        return self.model_choice()[0]

    def model_choice(self, layer: Image | None = None, pixels: np.ndarray | None = None):
        """(checkpoint, ModelChoice or None) for ``layer`` (default: the widget's image) and its slice ``pixels``
        (default: the displayed one); the choice is None when a model was picked by hand."""
        layer = layer if layer is not None else self.image_layer()
        if layer is None:
            return self.model_picker.checkpoint_for(None, False, "", "")
        info = SourceInfo.of(layer)
        if pixels is None:
            try:
                pixels = self.current_slice(layer)[0]
            except ValueError:
                pixels = None
        return self.model_picker.checkpoint_for(pixels, info.hounsfield, info.modality, info.body_part)

    def preload_model(self) -> None:
        """Load the chosen model in the background so the first Segment is fast."""
        checkpoint, device = self.checkpoint(), self.model_picker.device()
        return start_worker(self.session.segmenter, checkpoint, device, description="Loading LSMS model",
                            on_value=lambda _: self._say("Model ready."),
                            on_error=lambda error: self._fail(f"could not load the model: {error}"))

    def _use_model(self, path: str) -> None:
        self.model_picker.use_checkpoint(path)
        self._say(f"Using the new model {path}.")

    # --- segment ------------------------------------------------------------------------------
    def fields(self) -> dict:
        return self.structured.values()

    def _compose_into_box(self) -> None:
        """The structured fields write their sentence into the Expression box, unless the box holds
        words the user typed (those stay; the fields are then not saved with them)."""
        current = self.expression.text()
        if current.strip() and current != self._composed:
            return
        fields = self.fields()
        self._composed = ex.compose_expression("", fields) if fields else ""
        self.expression.setText(self._composed)

    def segment(self) -> None:
        if self._worker is not None:  # e.g. Return pressed in the expression while a run goes on
            self._say("Still segmenting: wait for this run to finish, or press Cancel before starting another.")
            return
        layer = self.image_layer()
        if layer is None:
            self._fail("open an image first (File > Open, or File > Open Sample > lsms-napari)")
            return
        try:
            text, attributes, dropped = ex.text_and_attributes(self.expression.text(), self.fields())
            pixels, index = self.current_slice(layer)
            checkpoint, choice = self.model_choice(layer, pixels)
        except (ExpressionError, ValueError) as error:
            self._fail(str(error))
            return
        info = SourceInfo.of(layer)
        warning = self.domain_guard.check(layer, pixels, checkpoint)  # once per image; Segment goes on
        self._domain_note = f" Note: {warning}" if warning else ""
        self._model_note = f" Model: {choice.describe()}." if choice is not None else ""
        if warning:
            show_warning(warning)
        kinds = ex.expression_kinds(attributes)
        request = SegmentRequest(pixels, text, info.hounsfield, layer.name, index, attributes, kinds, checkpoint,
                                 self.device_combo.currentText())
        self._fields_note = (" The structured fields are left out: the typed expression is not the sentence they "
                             "compose." if dropped else "")
        self._request_id += 1
        request_id = self._request_id
        loading = not self.session.is_loaded(checkpoint, request.device)
        self._say(("Loading the model, then segmenting" if loading else "Segmenting") + f' "{ex.elide(text)}"...'
                  + self._domain_note)
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
        source = self.images.source_layer(request.source_layer)
        if source is None:
            self._fail(f'the image "{request.source_layer}" was closed while segmenting; the result is discarded')
            return None
        index = request.slice_index
        if source.data.ndim != (2 if index is None else 3) or pixels_sha(
                source.data if index is None else source.data[index]) != proposal.image_sha:
            self._fail(f'the image "{source.name}" changed while segmenting (replaced or edited); the result is '
                       "discarded: press Segment again")
            return None
        self.prompts.text_result_made()
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
        self.session.proposals.add(key, proposal)
        self.viewer.layers.selection.active = labels
        found = "no finding" if not proposal.mask.any() else f"{int(proposal.mask.sum())} px"
        moved = self.image_combo.currentText() != source.name  # another image was picked meanwhile
        where = f' on "{source.name}", the image Segment ran on' if moved else ""
        self._say(f'"{ex.elide(request.text)}": {found}{where} in {proposal.seconds:.2f} s '
                  f'({proposal.model.get("name")}).{matching.hint(proposal)} Correct it with the brush, then Save '
                  'annotation.'
                  + self._fields_note + self._model_note + self._domain_note
                  + "".join(f" Note: {n}." for n in proposal.notes))
        for note in proposal.notes:
            show_warning(note)
        self.update_measurements()
        return labels

    def next_match(self) -> Labels | None:
        """Replace the selected Segment result's mask by its next match (matching.py); returns its layer."""
        found = self.active_proposal()
        if found is None:
            self._fail("select a Segment result first: Next match steps through the lesions its words rank")
            return None
        labels, proposal = found
        index = proposal.request.slice_index
        step = matching.next_match(proposal, mask_of(labels, index))
        if isinstance(step, str):
            self._fail(step)
            return None
        data = np.array(labels.data)
        (data if index is None else data[index])[...] = step.mask
        self.session.proposals.add(labels.metadata["lsms_proposal"], step)  # before the data event measures it
        labels.data = data
        self._say(matching.describe(step))
        return labels

    # --- measurements -------------------------------------------------------------------------
    def _on_active_layer(self, event=None) -> None:
        self.update_measurements()

    def active_proposal(self) -> tuple[Labels, Proposal] | None:
        layer = self.viewer.layers.selection.active
        if not isinstance(layer, Labels):
            return None
        proposal = self.session.proposals.get(layer.metadata.get("lsms_proposal"))
        return (layer, proposal) if proposal is not None else None

    def update_measurements(self) -> str:
        """Measure the selected Labels layer: a proposal on the slice it was made on, a hand-drawn layer on
        its image's displayed slice. Returns the text shown ("" when there is nothing to measure)."""
        layer = self.viewer.layers.selection.active
        if isinstance(layer, Labels) and FOLLOWED in layer.metadata:
            return self.follow_panel.measure(layer)
        found = self.active_proposal()
        if found is not None:
            labels, proposal = found
            source = self.images.source_layer(proposal.request.source_layer)
            info = SourceInfo.of(source) if source is not None else SourceInfo()
            return self.measurements.show_for(labels, mask_of(labels, proposal.request.slice_index),
                                              proposal.request.pixels, info)
        if isinstance(layer, Labels) and "lsms_proposal" not in layer.metadata:  # drawn by hand
            try:
                source, pixels, index = hand_drawn_image(layer, self.images)
            except ValueError:
                return self.measurements.show_for(None)
            return self.measurements.show_for(layer, mask_of(layer, index), pixels, SourceInfo.of(source))
        return self.measurements.show_for(None)

    # --- save / export ------------------------------------------------------------------------
    def _browse_dataset(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Annotation dataset folder")
        if path:
            self.dataset_path.setText(path)

    def save(self):
        """Save the selected Labels layer in a worker (a corrected proposal, or a mask drawn by hand);
        a layer saved before asks whether to update that annotation or add a new one. Returns the
        worker, or None when nothing is saved."""
        labels = self.viewer.layers.selection.active
        dataset = self.dataset_path.text().strip()
        if self._saving:
            self._say_data("Still saving the previous annotation: wait a moment, then save again.")
            return None
        if not isinstance(labels, Labels):
            self._fail_data("select the Labels layer to save: one made by Segment, or one you drew (new Labels layer "
                            "in the layer list, then paint the lesion)")
            return None
        if not dataset:
            self._fail_data("choose a dataset folder first")
            return None
        if FOLLOWED in labels.metadata:  # a followed 3-D lesion: every slice it covers, and its volume record
            return self.follow_panel.save(labels, dataset)
        try:
            target = save_target(labels, self.session.proposals, self.images, self.expression.text(), self.fields())
        except (ExpressionError, ValueError) as error:
            self._fail_data(str(error))
            return None
        replaces = None
        earlier = labels.metadata.get("lsms_saved")
        where = str(Path(dataset).resolve())
        if earlier and earlier.get("dataset") == where:
            choice = save_choice.ask_update_or_new(self, labels.name, earlier["id"])
            if choice is None:
                self._say_data("Not saved (cancelled).")
                return None
            replaces = earlier["id"] if choice == save_choice.UPDATE else None
        mask = mask_of(labels, target.annotation.slice_index).copy()
        self._saving = True
        return start_worker(
            save_annotation, dataset, target.annotation, mask, target.pixels, SourceInfo.of(target.source),
            self.current_window(target.source), self.include_identifiers.isChecked(), replaces,
            self.splits.chosen_split(), description="Saving annotation",
            on_value=lambda saved: self._on_saved(dataset, saved, labels=labels, dropped=target.fields_dropped),
            on_error=lambda error: self._on_saved(dataset, error=error),
            on_finished=lambda worker: setattr(self, "_saving", False))

    def _on_saved(self, dataset: str, saved: SaveResult | None = None, error: str | None = None, labels=None,
                  dropped: bool = False) -> None:
        self._saving = False  # free before the message shows: a Save right after it is taken
        if error is not None:
            self._fail_data(f"not saved: {error}")
            self.splits.refresh()
            return
        record = saved.record
        if labels is not None:  # a second Save of this layer asks: update this annotation, or add another?
            labels.metadata["lsms_saved"] = {"dataset": str(Path(dataset).resolve()), "id": record["id"]}
        self.structured.clear()  # the next annotation starts from empty fields
        self.splits.reset()  # and from its own patient's split
        self.splits.show_counts(saved.counts)
        provenance = record["provenance"]
        how = ("hand-drawn" if provenance.get("origin") == "hand-drawn"
               else f"edit Dice {provenance['edit_dice']}")
        verb = f"Updated (replaces {provenance['replaces']}):" if provenance.get("replaces") else "Saved"
        moved = (f" Patient group {record['split_group']} moved from {saved.moved_from} to {record['split']} "
                 f"({saved.moved} earlier annotation{'s' if saved.moved != 1 else ''} with it)." if saved.moved else "")
        self._say_data(f"{verb} {record['id']} ({record['split']}), {how}, to {dataset}"
                       + (" with patient identifiers." if "identifiers" in record else ".") + moved
                       + (" The structured fields were left out: the typed expression is not the sentence they "
                          "compose." if dropped else ""))

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

    def _choose_mask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export the selected mask", "", EXPORT_FILTERS)
        if path:
            self.export_mask(path)

    def export_mask(self, path: str):
        """Write the selected Labels layer as NIfTI or DICOM SEG (by ``path``'s suffix: mask_export.py) in a
        worker; returns it, or None when nothing can be exported (the status says why)."""
        labels = self.viewer.layers.selection.active
        if not isinstance(labels, Labels):
            self._fail_data("select the mask to export (a Labels layer) first")
            return None
        found = self.active_proposal()
        proposal = found[1] if found is not None else None
        name = proposal.request.source_layer if proposal is not None else labels.metadata.get("lsms_source")
        source = self.images.source_layer(name) if name else self.image_layer()
        if source is None:
            self._fail_data("open the image this mask lies on and pick it under Image")
            return None
        if tuple(labels.data.shape) != tuple(source.data.shape):
            self._fail_data(f'the mask "{labels.name}" does not have the shape of the image "{source.name}"')
            return None
        mask = np.asarray(labels.data).copy()
        if proposal is not None:  # the model's mask as proposed, or edited?
            index = proposal.request.slice_index
            shown = mask_of(labels, index)
            automatic = np.array_equal(shown, proposal.mask) and int((mask > 0).sum()) == int(shown.sum())
        else:
            automatic = labels.metadata.get(FOLLOWED, {}).get("sha256") == pixels_sha(mask)
        identifiers = self.include_identifiers.isChecked()
        description = mask_description(labels, proposal, self.expression.text())
        return start_worker(
            export_mask, mask, source_volume(source), path, description, identifiers, automatic,
            description="Exporting the mask",
            on_value=lambda written: self._say_data(
                f'Exported "{labels.name}" to {written}'
                + (" with patient identifiers." if identifiers and str(written).lower().endswith(".dcm") else ".")),
            on_error=lambda error: self._fail_data(f"export failed: {error}"))

    # --- training -----------------------------------------------------------------------------
    def train(self, extra_args: list[str] | None = None) -> TrainingProcess | None:
        """Start lsms-train on the dataset as a separate process; progress comes from its log."""
        return self.training_panel.train(self.dataset_path.text().strip(), extra_args)

    def use_trained_model(self) -> None:
        self.training_panel.use_trained_model()

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
        stopped = self.training_panel.shutdown()  # never an orphan lsms-train: it stops with the widget
        if stopped:
            show_info(stopped)
        self.follow_panel.stop()
        self.session.close()
        self._unbind_shortcuts()
        super().closeEvent(event)
