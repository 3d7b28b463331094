"""The warning, once per image, that an image lies outside what the model was trained on.

lsms_core.domain decides (DICOM Modality / BodyPartExamined, else intensity statistics); this module
remembers which images were checked against which model's domain, so each image is judged (and its
warning said) once. The warning never stops Segment: the user may know better.
"""

from __future__ import annotations

import numpy as np

from lsms_core.checkpoint import CheckpointError
from lsms_core.domain import ImageFacts, ModelDomain, domain_warning, model_domain, outside_domain

from ..layers import SourceInfo


class DomainGuard:
    """``check(layer, pixels, checkpoint)``: the warning for an image outside the model's domain, the
    first time that image (napari layer) meets that domain; None otherwise."""

    def __init__(self) -> None:
        self._checked: set[tuple[str, ModelDomain]] = set()

    def check(self, layer, pixels: np.ndarray, checkpoint: str) -> str | None:
        try:
            domain = model_domain(checkpoint)
        except (CheckpointError, OSError):  # Segment itself reports an unreadable checkpoint
            return None
        key = (str(getattr(layer, "unique_id", id(layer))), domain)
        if key in self._checked:
            return None
        self._checked.add(key)
        info = SourceInfo.of(layer)
        reasons = outside_domain(ImageFacts(pixels, info.hounsfield, info.modality, info.body_part), domain)
        return domain_warning(reasons, domain) if reasons else None
