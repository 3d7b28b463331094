"""Follow through slices: the mask the user accepted on one slice of a stack, followed to the slices
above and below (lsms_core.follow) in a worker, with napari's progress and a Stop button; the result
is a new 3-D Labels layer "<name> (followed)", edited like any other, with its volume measurements
(lsms_core.volume_measure) on the measurements line."""

from __future__ import annotations

import threading

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QWidget

from lsms_core.follow_engines import DEFAULT_ENGINE
from lsms_core.volume_measure import measure_volume

from ..layers import SourceInfo
from .save_target import mask_of
from .session import FollowOutcome, FollowRequest
from .workers import start_steps_worker

FOLLOWED = "lsms_followed"  # metadata key of a followed layer: what it was followed from, where it stopped
# The engines offered (lsms_core.follow_engines): "box" (LiteMedSAM) is left out, it outlines something in
# every box and so never stops by itself (docs/volumes.md: 3-D Dice 0.146 against 0.714).
ENGINE_TITLES = {"lesions": "the lesions LSMS finds", "words": "LSMS with the words"}


def slice_spacing(layer) -> float | None:
    """The distance between slices (mm) of a stack image layer when the reader knew it, else None."""
    info = SourceInfo.of(layer)
    return info.slice_spacing_mm if info.spacing_mm is not None else None


class FollowPanel(QWidget):
    """"Follow through slices" and "Stop" under the Segment row, and which engine proposes the parts."""

    def __init__(self, widget) -> None:
        super().__init__()
        self.widget = widget
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.follow_button = QPushButton("Follow through slices")
        self.follow_button.setToolTip("Select the mask you accepted on one slice of a stack: it is followed to the "
                                      "slices above and below until the lesion ends, as a new 3-D layer")
        self.follow_button.clicked.connect(self.follow)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.engine_combo = QComboBox()
        for engine, title in ENGINE_TITLES.items():
            self.engine_combo.addItem(title, engine)
        self.engine_combo.setCurrentIndex(list(ENGINE_TITLES).index(DEFAULT_ENGINE))
        self.engine_combo.setToolTip("What finds the lesion on each next slice (docs/volumes.md measures them)")
        layout.addWidget(self.follow_button)
        layout.addWidget(self.stop_button)
        layout.addWidget(QLabel("with"))
        layout.addWidget(self.engine_combo)
        self._cancel: threading.Event | None = None
        self._worker = None
        self._progress = None

    @property
    def running(self) -> bool:
        return self._worker is not None

    def engine(self) -> str:
        return self.engine_combo.currentData()

    def _seed(self):
        """(labels, source image, seed slice, seed mask, text) of the selected layer; ValueError saying what to do."""
        widget = self.widget
        layer = widget.viewer.layers.selection.active
        if not isinstance(layer, Labels):
            raise ValueError("select the mask to follow (a Labels layer on one slice of a stack) first")
        found = widget.active_proposal()
        if found is not None:
            proposal = found[1]
            source = widget.images.source_layer(proposal.request.source_layer)
            index, text = proposal.request.slice_index, proposal.request.text
        else:
            name = layer.metadata.get("lsms_source")
            source = widget.images.source_layer(name) if name else widget.image_layer()
            index, text = None, widget.expression.text().strip()
            if source is not None and source.data.ndim == 3:
                index = widget.current_slice(source)[1]
        if source is None:
            raise ValueError("open the image this mask lies on (it was closed)")
        if source.data.ndim != 3 or index is None:
            raise ValueError(f'"{source.name}" is one slice: Follow through slices needs a stack (a DICOM series, '
                             "NIfTI or NRRD volume, or File > Open Sample > LiTS CT volume)")
        if tuple(layer.data.shape) != tuple(source.data.shape):
            raise ValueError(f'the mask "{layer.name}" does not have the shape of "{source.name}"')
        seed = mask_of(layer, index)
        if not seed.any():
            raise ValueError(f'"{layer.name}" is empty on slice {index}: segment or draw the lesion there first')
        return layer, source, int(index), seed, text

    def follow(self) -> None:
        widget = self.widget
        if self.running:
            widget._say("Still following: wait for it, or press Stop.")
            return
        try:
            layer, source, index, seed, text = self._seed()
        except ValueError as error:
            widget._fail(str(error))
            return
        info = SourceInfo.of(source)
        engine = self.engine()
        if engine == "words" and not text:
            widget._fail("the 'LSMS with the words' engine needs the expression: type it in the Expression box")
            return
        data = source.data  # replaced meanwhile (another image put in the layer): the result is discarded
        request = FollowRequest(np.asarray(data), info.hounsfield, index, seed, text or "all lesions", widget.checkpoint(),
                                widget.device_combo.currentText(), engine,
                                widget.current_window(source) if info.hounsfield else None)
        from napari.utils import progress

        self._cancel = threading.Event()
        self._progress = progress(total=0, desc=f"Follow through slices: {layer.name[:30]}")
        self.follow_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        widget._say(f'Following "{layer.name}" from slice {index} through "{source.name}"...')
        self._worker = start_steps_worker(
            widget.session.follow_steps, request, self._cancel, on_step=self._on_step,
            on_value=lambda outcome: self._on_result(outcome, layer.name, source.name, data, request),
            on_error=lambda error: widget._fail(f"following failed: {error}"), on_finished=self._on_finished)

    def stop(self) -> None:
        """Stop after the slice in hand; what was followed so far becomes the layer."""
        if self._cancel is not None:
            self._cancel.set()
            self.widget._say("Stopping after this slice...")

    def _on_step(self, step: tuple[int, int]) -> None:
        done, expected = step
        if self._progress is not None:
            self._progress.total = expected
            self._progress.n = done
            self._progress.refresh()

    def _on_finished(self, worker=None) -> None:
        self._worker = None
        self._cancel = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.follow_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    def _on_result(self, outcome: FollowOutcome, seed_name: str, source_name: str, data,
                   request: FollowRequest) -> Labels | None:
        widget = self.widget
        result = outcome.result
        source = widget.images.source_layer(source_name)
        if source is None or source.data is not data or not outcome.image_unchanged:
            widget._fail(f'"{source_name}" was closed or changed while following; the result is discarded')
            return None
        stops = {name: {"slice": stop.slice, "reason": stop.reason} for name, stop in result.stops.items()}
        metadata = {"lsms_source": source.name, FOLLOWED: {
            "from": seed_name, "seed_slice": result.seed_slice, "text": request.text, "engine": request.engine,
            "slices": result.slices, "stops": stops, "sha256": outcome.mask_sha}}  # the sha tells edits apart
        name = f"{seed_name} (followed)"
        labels = widget.viewer.add_labels(result.mask.astype(np.uint8), name=name, scale=source.scale,
                                          translate=source.translate, metadata=metadata)
        widget.viewer.layers.selection.active = labels
        measured = self.measure(labels)
        ends = ", ".join(f"{side} at slice {stops[key]['slice']} ({stops[key]['reason']})"
                         for key, side in (("down", "below"), ("up", "above")) if key in stops)
        widget._say(f'"{name}": {len(result.slices)} slices ({result.slices[0]}-{result.slices[-1]})'
                    + (" (stopped by you)" if result.cancelled else "") + f". Ends: {ends}. {measured}")
        return labels

    def measure(self, labels: Labels) -> str:
        """The volume measurements of a followed layer, shown on the measurements line; returns them."""
        widget = self.widget
        source = widget.images.source_layer(labels.metadata.get("lsms_source"))
        if source is None or tuple(source.data.shape) != tuple(labels.data.shape):
            widget.measurements.setText("")
            return ""
        info = SourceInfo.of(source)
        text = measure_volume(np.asarray(labels.data) > 0, info.spacing_mm, slice_spacing(source),
                              np.asarray(source.data), info.hounsfield).summary()
        widget.measurements.setText(f"{labels.name}: {text}")
        return text
