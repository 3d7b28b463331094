"""What a segmentation returns, whichever runtime made it (``Segmenter`` with PyTorch, ``QuickSegmenter``
without it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .candidates import Matches


@dataclass
class SegmentationResult:
    """A proposed mask at the image's own size.

    mask: (H,W) bool. probability: (H,W) float32 in [0,1]. seconds: wall time of this call.
    matches: for a model with a lesion selector, the slice's candidates as the words rank them (what "next
    match" steps through); None otherwise.
    """

    mask: np.ndarray
    probability: np.ndarray
    text: str
    seconds: float
    device: str
    model: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    matches: Matches | None = None

    @property
    def pixels(self) -> int:
        return int(np.count_nonzero(self.mask))
