"""Click and box prompts in the widget, and Refine (docs/plugin.md, item 5b).

The buttons put the image's clicks layer (Points) or boxes layer (Shapes) in add mode; every click
or box added, moved or deleted runs the prompts again in a worker (one run at a time: changes made
meanwhile are taken in one more run) through ``WidgetSession.run_prompts``:

- clicks on a text result (the Segment layer selected when a prompt mode was switched on) keep
  (positive) or drop (negative) its parts, and a positive click elsewhere adds the prompt model's
  outline there; the text result's layer shows the outcome and its proposal records how it was made;
- clicks and boxes without a text result give a layer "<image>: prompted (LiteMedSAM)".

"Refine" redraws the selected text result with the prompt model (a box per part) as a new layer.
The status line names the engine that drew each mask; saving records it (``Proposal.provenance_model``).
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QPushButton, QVBoxLayout

from ..layers import SourceInfo
from . import prompt_layers as pl
from .save_target import mask_of
from .session import LSMS_ENGINE, PROMPT_ENGINE, PromptRequest, PromptResult, Proposal, SegmentRequest, pixels_sha
from .workers import start_worker

MODES = (None, "positive", "negative", "box")  # the order the "next prompt mode" shortcut goes through
PROMPTED_SUFFIX = f": prompted ({PROMPT_ENGINE})"
CHANGES = {"added", "removed", "changed"}  # data events that change the prompts (not "adding" etc.)


class PromptPanel(QGroupBox):
    """The "Click and box prompts" box; ``widget`` is the ReferringLesionSegmentWidget it lives in."""

    def __init__(self, widget) -> None:
        super().__init__("Click and box prompts (LiteMedSAM)")
        self.widget, self.viewer = widget, widget.viewer
        self.mode: str | None = None
        self.preparing = None  # the worker loading the prompt model and encoding the slice, while it runs
        self.targets: dict[str, str | None] = {}  # image name -> the text result's proposal key the clicks act on
        self._worker = None
        self._pending: set[str] = set()  # images whose prompts changed while a run was going on
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.positive_button = QPushButton("+ Click")
        self.positive_button.setToolTip("Click on a lesion: the prompt model outlines it; on a part of a text result: "
                                        "keep that part (Shift-C: next prompt mode)")
        self.negative_button = QPushButton("\u2212 Click")
        self.negative_button.setToolTip("Click on a part to drop it (Shift-C: next prompt mode)")
        self.box_button = QPushButton("Box")
        self.box_button.setToolTip("Drag a box around a lesion: the prompt model outlines it (Shift-C: next prompt "
                                   "mode)")
        for button, mode in ((self.positive_button, "positive"), (self.negative_button, "negative"),
                             (self.box_button, "box")):
            button.setCheckable(True)
            button.clicked.connect(lambda checked, mode=mode: self.set_mode(mode if checked else None))
            row.addWidget(button)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Remove the clicks and boxes on this slice")
        self.clear_button.clicked.connect(self.clear)
        row.addWidget(self.clear_button)
        layout.addLayout(row)
        self.refine_button = QPushButton("Refine with LiteMedSAM")
        self.refine_button.setToolTip("Redraw the selected text result's outline with the prompt model (with a decoder "
                                      "fine-tuned to outline LSMS's lesions), one box per part (Shift-R); the "
                                      "result is a new layer")
        self.refine_button.clicked.connect(self.refine)
        layout.addWidget(self.refine_button)

    # --- modes --------------------------------------------------------------------------------
    def next_mode(self) -> str | None:
        """Off -> positive clicks -> negative clicks -> box -> off; returns the new mode."""
        self.set_mode(MODES[(MODES.index(self.mode) + 1) % len(MODES)])
        return self.mode

    def set_mode(self, mode: str | None) -> None:
        """Switch prompting to ``mode`` (None: off). The first switch on an image chooses what the clicks act
        on: the Segment result selected then (on that image), or nothing (the prompts alone)."""
        image = self.widget.image_layer()
        if mode is not None and image is None:
            self.widget._fail("open an image first: clicks and boxes are placed on it")
            mode = None
        if mode is not None:
            self._choose_target(image)
            points, shapes = pl.clicks_layer(self.viewer, image), pl.boxes_layer(self.viewer, image)
            for layer in (points, shapes):
                if not layer.metadata.get("lsms_watched"):
                    layer.metadata["lsms_watched"] = True
                    layer.events.data.connect(lambda event, name=image.name: self._changed(name, event))
            if mode == "box":
                self.viewer.layers.selection.active = shapes
                shapes.mode = "add_rectangle"
            else:
                pl.set_click_sign(points, mode == "positive")
                self.viewer.layers.selection.active = points
                points.mode = "add"
            self._prepare(image)
            target = self.target_layer(image.name)
            on = f' on "{target.name}" (a click on a part keeps it, a negative click drops it)' if target else ""
            self.widget._say({"positive": "Click on a lesion", "negative": "Click on a part to drop it",
                              "box": "Drag a box around a lesion"}[mode] + on + ".")
        else:
            for layer in self.viewer.layers:
                if layer.metadata.get(pl.SOURCE_KEY) and layer.mode != "pan_zoom":
                    layer.mode = "pan_zoom"
        self.mode = mode
        for button, name in ((self.positive_button, "positive"), (self.negative_button, "negative"),
                             (self.box_button, "box")):
            button.setChecked(mode == name)

    def _request(self, image: Image, pixels: np.ndarray, clicks=(), boxes=(), text_mask=None) -> PromptRequest:
        info = SourceInfo.of(image)
        window = self.widget.current_window(image) if info.hounsfield else None
        return PromptRequest(pixels, info.hounsfield, window, list(clicks), list(boxes), text_mask,
                             self.widget.device_combo.currentText())

    def _prepare(self, image: Image) -> None:
        """Load the prompt model and encode the displayed slice in the background as soon as a prompt mode
        is on: the first click then waits only for the cheap step."""
        if self.preparing is not None:
            return
        pixels, _ = self.widget.current_slice(image)
        loading = not self.widget.session.prompt_model_loaded
        self.preparing = start_worker(
            self.widget.session.prepare_prompts, self._request(image, pixels),
            description=f"Loading {PROMPT_ENGINE}" if loading else f"{PROMPT_ENGINE}: encoding the slice",
            on_value=lambda seconds: None,
            on_error=lambda error: self.widget._fail(f"the prompt model could not start: {error}"),
            on_finished=lambda worker: setattr(self, "preparing", None), progress=loading)

    def _choose_target(self, image: Image) -> None:
        """A Segment result selected on this image becomes what the clicks act on; the clicks and boxes
        placed for another target are cleared (they spoke of its parts)."""
        active = self.viewer.layers.selection.active
        if not isinstance(active, Labels):
            self.targets.setdefault(image.name, None)
            return
        key = active.metadata.get("lsms_proposal")
        proposal = self.widget.session.proposals.get(key)
        if proposal is None or proposal.request.source_layer != image.name or not proposal.request.text:
            return
        if self.targets.get(image.name) != key:
            self.targets[image.name] = key
            pl.clear_slice(pl.clicks_layer(self.viewer, image, create=False),
                           pl.boxes_layer(self.viewer, image, create=False), None)

    def target_layer(self, image_name: str) -> Labels | None:
        key = self.targets.get(image_name)
        if key is None or key not in self.widget.session.proposals:
            return None
        return next((la for la in self.viewer.layers if isinstance(la, Labels) and la.metadata.get("lsms_proposal")
                     == key), None)

    def text_result_made(self) -> None:
        """A new Segment result: prompting stops (the next prompt mode acts on the new result)."""
        if self.mode is not None:
            self.set_mode(None)

    def clear(self) -> None:
        image = self.widget.image_layer()
        if image is None:
            return
        _, index = self.widget.current_slice(image)
        pl.clear_slice(pl.clicks_layer(self.viewer, image, create=False),
                       pl.boxes_layer(self.viewer, image, create=False), index)

    # --- running the prompts ------------------------------------------------------------------
    def _changed(self, image_name: str, event) -> None:
        if getattr(event, "action", "added") in CHANGES:
            self.run(image_name)

    def run(self, image_name: str):
        """Run the prompts of ``image_name``'s displayed slice (queued if a run is going on); returns the
        worker, or None."""
        if self._worker is not None:
            self._pending.add(image_name)
            return None
        image = self.widget.images.source_layer(image_name)
        if image is None:
            return None
        pixels, index = self.widget.current_slice(image)
        points = pl.clicks_layer(self.viewer, image, create=False)
        shapes = pl.boxes_layer(self.viewer, image, create=False)
        clicks, boxes = pl.clicks_on_slice(points, index), pl.boxes_on_slice(shapes, index)
        target = self.target_layer(image_name)
        proposal = self.widget.session.proposals.get(target.metadata["lsms_proposal"]) if target else None
        if proposal is not None and (proposal.request.slice_index != index
                                     or pixels_sha(pixels) != proposal.image_sha):
            proposal = None  # the text result is on another slice (or image): these prompts stand alone
        text_mask = None if proposal is None else (proposal.text_mask if proposal.text_mask is not None
                                                   else proposal.mask)
        if not clicks and not boxes:
            self._show(image, index, pixels, proposal, None, text_mask)
            return None
        request = self._request(image, pixels, clicks, boxes, text_mask)
        key = target.metadata["lsms_proposal"] if proposal is not None else None

        def finished(_worker) -> None:
            self._worker = None
            if self._pending:
                self.run(self._pending.pop())

        self._worker = start_worker(
            self.widget.session.run_prompts, request, description="Prompts",
            on_value=lambda result: self._show(image, index, pixels, self.widget.session.proposals.get(key), result,
                                               text_mask),
            on_error=lambda error: self.widget._fail(f"the prompts could not be segmented: {error}"),
            on_finished=finished, progress=not self.widget.session.prompt_model_loaded)  # loading: seconds
        return self._worker

    def _show(self, image: Image, index: int | None, pixels: np.ndarray, proposal: Proposal | None,
              result: PromptResult | None, text_mask: np.ndarray | None) -> None:
        """Put a prompt run's mask (None: no prompts left on the slice) on the text result or on the image's
        prompted layer."""
        if self.widget.images.source_layer(image.name) is not image:
            return  # closed meanwhile
        if proposal is not None:  # clicks on a text result
            mask = text_mask if result is None else result.prompted.mask
            used_model = result is not None and result.prompted.used_prompt_model
            proposal.mask = mask
            proposal.text_mask = text_mask
            proposal.engine = LSMS_ENGINE if result is None else (
                f"{LSMS_ENGINE} + {PROMPT_ENGINE}" if used_model else f"{LSMS_ENGINE} + clicks")
            proposal.prompt_model = result.prompt_model if used_model else None
            proposal.prompts = None if result is None else result.prompted.prompts
            layer = self.target_layer(image.name)
            if layer is not None:
                _put(layer, index, mask)
            if result is not None:
                p = result.prompted
                self.widget._say(f"{proposal.engine}: {p.kept_parts} part{'s' if p.kept_parts != 1 else ''} of the text "
                                 f"result kept, {p.dropped_parts} dropped" + (f", {p.sam_calls} outline"
                                 f"{'s' if p.sam_calls != 1 else ''} added by {PROMPT_ENGINE}" if p.sam_calls else "")
                                 + f" ({int(mask.sum())} px, {result.seconds * 1000:.0f} ms).")
            self.widget.update_measurements()
            return
        layer = self._prompted_layer(image, index)
        if result is None:
            if layer is not None:
                _put(layer, index, np.zeros(pixels.shape, dtype=bool))
            return
        mask = result.prompted.mask
        request = SegmentRequest(pixels, "", SourceInfo.of(image).hounsfield, image.name, index,
                                 device=self.widget.device_combo.currentText())
        made = Proposal(request, mask, dict(result.prompt_model or {}), result.seconds, pixels_sha(pixels),
                        engine=PROMPT_ENGINE, prompts=result.prompted.prompts)
        if layer is None:
            clicked = self.viewer.layers.selection.active  # add_labels selects the new layer: the next click
            key = uuid.uuid4().hex                          # must still go to the clicks (or boxes) layer
            data = np.zeros(image.data.shape, dtype=np.uint8)
            layer = self.viewer.add_labels(data, name=image.name + PROMPTED_SUFFIX + ("" if index is None else
                                                                                       f" [slice {index}]"),
                                           scale=image.scale, translate=image.translate,
                                           metadata={"lsms_proposal": key, "lsms_source": image.name,
                                                     "lsms_slice": index, "lsms_prompted": True})
            # the prompt layers stay on top, and the one being clicked stays selected
            for prompt_layer in (pl.boxes_layer(self.viewer, image, False), pl.clicks_layer(self.viewer, image, False)):
                if prompt_layer is not None:
                    self.viewer.layers.move(self.viewer.layers.index(prompt_layer), len(self.viewer.layers))
            if clicked is not None and clicked in self.viewer.layers:
                self.viewer.layers.selection.active = clicked
        self.widget.session.proposals.add(layer.metadata["lsms_proposal"], made)
        _put(layer, index, mask)
        self.widget._say(f"{PROMPT_ENGINE}: {int(mask.sum())} px from {len(result.request.clicks)} click"
                         f"{'s' if len(result.request.clicks) != 1 else ''} and {len(result.request.boxes)} box"
                         f"{'es' if len(result.request.boxes) != 1 else ''} in {result.seconds * 1000:.0f} ms. Type "
                         "the expression it answers, then select the layer and Save annotation.")
        self.widget.update_measurements()

    def _prompted_layer(self, image: Image, index: int | None) -> Labels | None:
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and layer.metadata.get("lsms_prompted") and \
                    layer.metadata.get("lsms_source") == image.name and layer.metadata.get("lsms_slice") == index:
                return layer
        return None

    # --- refine -------------------------------------------------------------------------------
    def refine(self):
        """Redraw the selected text result with the prompt model as a new layer; returns the worker."""
        found = self.widget.active_proposal()
        if found is None or not found[1].request.text:
            self.widget._fail("select a Segment result to refine (a Labels layer made from an expression)")
            return None
        layer, proposal = found
        image = self.widget.images.source_layer(proposal.request.source_layer)
        if image is None:
            self.widget._fail(f'the image "{proposal.request.source_layer}" is closed: nothing to refine on')
            return None
        mask = mask_of(layer, proposal.request.slice_index)
        if not mask.any():
            self.widget._fail(f'"{layer.name}" is empty: there is no outline to refine')
            return None
        request = replace(self._request(image, proposal.request.pixels, text_mask=mask),
                          checkpoint=proposal.request.checkpoint)
        self.refine_button.setEnabled(False)
        self.widget._say(f'Refining "{layer.name}" with {PROMPT_ENGINE}...')
        return start_worker(self.widget.session.refine, request, description=f"Refine with {PROMPT_ENGINE}",
                            on_value=lambda outcome: self._refined(layer, proposal, *outcome),
                            on_error=lambda error: self.widget._fail(f"refine failed: {error}"),
                            on_finished=lambda worker: self.refine_button.setEnabled(True))

    def _refined(self, layer: Labels, proposal: Proposal, refined, identity: dict, seconds: float) -> Labels | None:
        image = self.widget.images.source_layer(proposal.request.source_layer)
        if image is None:
            return None
        made = replace(proposal, mask=refined.mask, seconds=seconds, engine=f"{LSMS_ENGINE} + {PROMPT_ENGINE}",
                       prompt_model=identity, text_mask=None, notes=[],  # clicks on it act on the refined mask
                       prompts={**(proposal.prompts or {}), "refine": {"redrawn": refined.redrawn,
                                                                        "kept": refined.kept}})
        key = uuid.uuid4().hex
        data = np.zeros(image.data.shape, dtype=np.uint8)
        new = self.viewer.add_labels(data, name=f"{layer.name} (refined)", scale=image.scale, translate=image.translate,
                                     metadata={"lsms_proposal": key, "lsms_source": image.name,
                                               "lsms_slice": proposal.request.slice_index})
        _put(new, proposal.request.slice_index, refined.mask)
        self.widget.session.proposals.add(key, made)
        layer.visible = False
        self.viewer.layers.selection.active = new
        kept = (f", {refined.kept} kept as {LSMS_ENGINE} drew {'them' if refined.kept != 1 else 'it'} (the "
                f"outline {PROMPT_ENGINE} drew there disagreed)" if refined.kept else "")
        decoder = identity.get("decoder", {}).get("name", "its own decoder")
        self.widget._say(f'"{layer.name}" refined by {PROMPT_ENGINE} ({decoder}): {refined.redrawn} part'
                         f"{'s' if refined.redrawn != 1 else ''} redrawn{kept} in {seconds * 1000:.0f} ms; the "
                         "unrefined layer is hidden.")
        self.widget.update_measurements()
        return new


def _put(layer: Labels, index: int | None, mask: np.ndarray) -> None:
    """Replace the layer's mask on the slice (the whole 2-D layer when ``index`` is None)."""
    data = np.array(layer.data, copy=True)
    if index is None:
        data[...] = 0
        data[mask] = 1
    else:
        data[index] = 0
        data[index][mask] = 1
    layer.data = data
