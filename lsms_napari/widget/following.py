"""Follow through slices: the mask the user accepted on one slice of a stack, followed to the slices
above and below (lsms_core.follow) in a worker, with napari's progress and a Stop button; the result
is a new 3-D Labels layer "<name> (followed)", edited like any other, with its volume measurements
(lsms_core.volume_measure) on the measurements line."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QWidget

from lsms_core.follow_engines import DEFAULT_ENGINE
from lsms_core.volume_measure import measure_volume

from ..layers import SourceInfo
from . import expression as ex
from . import save_choice
from .lesion_saving import LesionSaveResult, LesionWords, save_followed_lesion
from .save_target import mask_of, typed_words
from .saving import HAND_DRAWN, MODEL_PROPOSAL
from .session import FollowOutcome, FollowRequest
from .workers import start_steps_worker, start_worker

FOLLOWED = "lsms_followed"  # metadata key of a followed layer: what it was followed from, where it stopped
# The engines offered (lsms_core.follow_engines): "box" (LiteMedSAM) is left out, it outlines something in
# every box and so never stops by itself (docs/volumes.md: 3-D Dice 0.146 against 0.714).
ENGINE_TITLES = {"lesions": "the lesions LSMS finds", "words": "LSMS with the words"}
KEPT_RESULTS = 8  # followed masks kept as the proposals of a later save (each only its slices: ~5 MB at 20x512^2)


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
        # result key -> (first slice, the follower's mask on its slices): what a save compares the edits with
        self._results: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()

    @property
    def running(self) -> bool:
        return self._worker is not None

    def engine(self) -> str:
        return self.engine_combo.currentData()

    def _seed(self):
        """(labels, source image, seed slice, seed mask, words) of the selected layer, the words a LesionWords
        (its text "" when none is known); ValueError saying what to do."""
        widget = self.widget
        layer = widget.viewer.layers.selection.active
        if not isinstance(layer, Labels):
            raise ValueError("select the mask to follow (a Labels layer on one slice of a stack) first")
        found = widget.active_proposal()
        if found is not None:
            proposal = found[1]
            source = widget.images.source_layer(proposal.request.source_layer)
            index, request = proposal.request.slice_index, proposal.request
            words = LesionWords(request.text, dict(request.attributes), list(request.kinds), MODEL_PROPOSAL)
        else:
            name = layer.metadata.get("lsms_source")
            source = widget.images.source_layer(name) if name else widget.image_layer()
            index, words = None, LesionWords(widget.expression.text().strip(), seed_origin=HAND_DRAWN)
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
        return layer, source, int(index), seed, words

    def follow(self) -> None:
        widget = self.widget
        if self.running:
            widget._say("Still following: wait for it, or press Stop.")
            return
        try:
            layer, source, index, seed, words = self._seed()
        except ValueError as error:
            widget._fail(str(error))
            return
        text = words.text
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
            on_value=lambda outcome: self._on_result(outcome, layer.name, source.name, data, request, words),
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
                   request: FollowRequest, words: LesionWords) -> Labels | None:
        widget = self.widget
        result = outcome.result
        source = widget.images.source_layer(source_name)
        if source is None or source.data is not data or not outcome.image_unchanged:
            widget._fail(f'"{source_name}" was closed or changed while following; the result is discarded')
            return None
        stops = {name: {"slice": stop.slice, "reason": stop.reason} for name, stop in result.stops.items()}
        key = uuid.uuid4().hex
        first, last = result.slices[0], result.slices[-1]
        self._results[key] = (first, result.mask[first:last + 1].copy())
        while len(self._results) > KEPT_RESULTS:
            self._results.popitem(last=False)
        metadata = {"lsms_source": source.name, FOLLOWED: {
            "from": seed_name, "seed_slice": result.seed_slice, "text": request.text, "engine": request.engine,
            "slices": result.slices, "stops": stops, "sha256": outcome.mask_sha,  # the sha tells edits apart
            "words": asdict(words), "volume_sha": outcome.volume_sha, "model": outcome.model, "result": key}}
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

    # --- saving the followed lesion ---------------------------------------------------------------
    def proposal_of(self, labels: Labels) -> np.ndarray | None:
        """The follower's own (Z,H,W) mask behind a followed layer, when still kept, else None."""
        kept = self._results.get(labels.metadata.get(FOLLOWED, {}).get("result"))
        if kept is None:
            return None
        first, part = kept
        proposal = np.zeros(labels.data.shape, dtype=bool)
        proposal[first:first + len(part)] = part
        return proposal

    def save(self, labels: Labels, dataset: str):
        """Save the followed lesion of ``labels`` (Save annotation on a followed layer): a line per slice and a
        volume record (docs/dataset-format.md, "3-D lesions"), in a worker. Returns the worker, or None."""
        widget = self.widget
        followed = labels.metadata[FOLLOWED]
        source = widget.images.source_layer(labels.metadata.get("lsms_source"))
        if source is None or tuple(source.data.shape) != tuple(labels.data.shape):
            widget._fail_data(f'open the image "{labels.metadata.get("lsms_source")}" this lesion was followed on')
            return None
        saved_words = LesionWords(**followed.get("words", {"text": ""}))
        try:
            if saved_words.text:
                words = saved_words
            else:  # a hand-drawn seed followed without words: they come from the Expression box now
                text, attributes, _ = typed_words(widget.expression.text(), widget.fields())
                words = LesionWords(text, attributes, ex.expression_kinds(attributes), HAND_DRAWN)
        except ValueError as error:
            widget._fail_data(str(error))
            return None
        replaces = None
        earlier = labels.metadata.get("lsms_saved")
        if earlier and earlier.get("dataset") == str(Path(dataset).resolve()) and earlier.get("lesion"):
            choice = save_choice.ask_update_or_new(widget, labels.name, earlier["lesion"])
            if choice is None:
                widget._say_data("Not saved (cancelled).")
                return None
            replaces = earlier["lesion"] if choice == save_choice.UPDATE else None
        widget._saving = True
        return start_worker(
            save_followed_lesion, dataset, np.asarray(labels.data).copy(), np.asarray(source.data),
            SourceInfo.of(source), widget.current_window(source), words, dict(followed), followed.get("model"),
            self.proposal_of(labels), widget.include_identifiers.isChecked(), replaces, widget.splits.chosen_split(),
            description="Saving the followed lesion",
            on_value=lambda saved: self._on_saved(dataset, saved, labels),
            on_error=lambda error: widget._on_saved(dataset, error=error),
            on_finished=lambda worker: setattr(widget, "_saving", False))

    def _on_saved(self, dataset: str, saved: LesionSaveResult, labels: Labels) -> None:
        widget = self.widget
        widget._saving = False
        volume = saved.volume
        labels.metadata["lsms_saved"] = {"dataset": str(Path(dataset).resolve()), "lesion": volume["id"]}
        widget.splits.reset()
        widget.splits.show_counts(saved.counts)
        slices = volume["slices"]
        verb = f"Updated lesion (replaces {volume['provenance']['replaces']}):" if volume["provenance"].get(
            "replaces") else "Saved lesion"
        moved = (f" Patient group {volume['split_group']} moved from {saved.moved_from} to {volume['split']} "
                 f"({saved.moved} earlier annotation{'s' if saved.moved != 1 else ''} with it)." if saved.moved else "")
        widget._say_data(f"{verb} {volume['id']} ({volume['split']}): {len(slices)} slices ({slices[0]}-{slices[-1]}), "
                         f"one annotation each, to {dataset}"
                         + (" with patient identifiers." if "identifiers" in saved.records[0] else ".") + moved)
