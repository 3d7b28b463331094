"""Which image Segment reads, which slice of it, and the display window (the "Image" and "Window" rows).

The window choices follow the picked image: CT in HU gets the file's own window and the HU presets
(soft tissue, liver, lung, bone, brain); any other image (MR, radiographs, PNG: values without physical
units, where an HU window would show a white or black image) gets its file's own window, when it has
one, and "auto", the 0.5-99.5th percentiles of the displayed slice."""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QComboBox

from lsms_core.windows import WINDOW_PRESETS, Window, percentile_limits, window_from_limits, window_limits

from ..layers import SourceInfo

FILE_WINDOW = "file's own window"
AUTO_WINDOW = "auto (percentiles)"


class ImagePicker:
    """The image combo and the window combo, and what they mean for the viewer's layers."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.image_combo = QComboBox()
        self.window_combo = QComboBox()
        self.window_combo.addItems([FILE_WINDOW, *WINDOW_PRESETS])
        self.window_combo.currentTextChanged.connect(self.apply_window)
        self.image_combo.currentTextChanged.connect(lambda _: self.offer_windows())

    def image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb]

    def source_layer(self, name: str) -> Image | None:
        """The open image layer called ``name`` (the one a proposal was made on), or None."""
        return next((layer for layer in self.image_layers() if layer.name == name), None)

    def refresh(self, event=None) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self.image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_combo.currentText() != current:
            self.offer_windows()

    def window_choices(self, layer: Image | None) -> list[str]:
        """The windows offered for ``layer``: HU presets for CT in HU only; "auto" for other images."""
        if layer is None:
            return [FILE_WINDOW, *WINDOW_PRESETS]
        info = SourceInfo.of(layer)
        if info.hounsfield:
            return [FILE_WINDOW, *WINDOW_PRESETS]
        return [FILE_WINDOW, AUTO_WINDOW] if info.window else [AUTO_WINDOW]

    def offer_windows(self) -> None:
        """Fill the Window row for the picked image (the layer's contrast is left as it is)."""
        choices = self.window_choices(self.image_layer())
        if [self.window_combo.itemText(i) for i in range(self.window_combo.count())] == choices:
            return
        self.window_combo.blockSignals(True)
        self.window_combo.clear()
        self.window_combo.addItems(choices)
        self.window_combo.blockSignals(False)

    def image_layer(self) -> Image | None:
        return self.source_layer(self.image_combo.currentText())

    def current_slice(self, layer: Image) -> tuple[np.ndarray, int | None]:
        """(pixels (H,W), slice index or None): the 2-D image, or the displayed slice of a stack."""
        if layer.ndim == 2:
            return np.asarray(layer.data), None
        if layer.ndim != 3:
            raise ValueError(f"{layer.name} has {layer.ndim} dimensions; pick a 2-D image or a stack of slices")
        index = int(round(float(layer.world_to_data(self.viewer.dims.point)[0])))
        index = min(max(index, 0), layer.data.shape[0] - 1)
        return np.asarray(layer.data[index]), index

    def apply_window(self, name: str) -> None:
        layer = self.image_layer()
        if layer is None:
            return
        if name == FILE_WINDOW:
            info = SourceInfo.of(layer)
            if info.window:
                layer.contrast_limits = window_limits(*info.window)
            return
        if name == AUTO_WINDOW:
            low, high = percentile_limits(self.current_slice(layer)[0])
            layer.contrast_limits = (low, max(high, low + 1e-6))
            return
        if name in WINDOW_PRESETS and SourceInfo.of(layer).hounsfield:  # never an HU window on other values
            layer.contrast_limits = WINDOW_PRESETS[name].limits

    def current_window(self, layer: Image) -> Window:
        """The window the user is looking at (a preset's name when it matches one)."""
        low, high = (float(v) for v in layer.contrast_limits)
        for preset in WINDOW_PRESETS.values():
            if np.allclose(preset.limits, (low, high)):
                return preset
        names = {FILE_WINDOW: "file", AUTO_WINDOW: "auto"}
        return window_from_limits(low, high, names.get(self.window_combo.currentText(), "custom"))
