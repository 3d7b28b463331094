"""The measurements line under the buttons: per connected part (area, RECIST long and short axis) and
the total (pixels, area, mean ± SD in HU or raw units) of the selected Labels layer's mask."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QLabel

from lsms_core.measure import measure_mask

from ..layers import SourceInfo


class MeasurementsLabel(QLabel):
    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)

    def show_for(self, labels: Labels | None, mask: np.ndarray | None = None, pixels: np.ndarray | None = None,
                 info: SourceInfo | None = None) -> str:
        """Measure ``mask`` (H,W bool, the layer's slice) over ``pixels`` (H,W, the image slice it lies
        on; ``info`` gives spacing and units); with no labels, clear the line. Returns the text
        shown after the layer's name (one line per part when there are several)."""
        if labels is None or mask is None:
            self.setText("")
            return ""
        info = info or SourceInfo()
        text = measure_mask(mask, info.spacing_mm, pixels, info.hounsfield).summary_by_part()
        self.setText(f"{labels.name}: {text}")
        return text
