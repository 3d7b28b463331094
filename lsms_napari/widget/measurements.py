"""The measurements line under the buttons: area, RECIST diameters and HU of the selected proposal."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QLabel

from lsms_core.measure import measure_mask

from ..layers import SourceInfo
from .session import Proposal


def labels_slice(labels: Labels, proposal: Proposal) -> np.ndarray:
    """The (corrected) mask of ``proposal`` in its Labels layer, as (H,W) bool."""
    index = proposal.request.slice_index
    return np.asarray(labels.data if index is None else labels.data[index]) > 0


class MeasurementsLabel(QLabel):
    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)

    def show_for(self, labels: Labels | None, proposal: Proposal | None, source) -> str:
        """Measure ``labels`` (painted over ``proposal`` made on image layer ``source``, or None when
        it was closed); with no labels, clear the line. Returns the summary shown."""
        if labels is None or proposal is None:
            self.setText("")
            return ""
        info = SourceInfo.of(source) if source is not None else SourceInfo()
        text = measure_mask(labels_slice(labels, proposal), info.spacing_mm, proposal.request.pixels,
                            info.hounsfield).summary()
        self.setText(f"{labels.name}: {text}")
        return text
