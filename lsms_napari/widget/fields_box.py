"""The "Structured description" box: optional fields that compose the expression (expression.py)."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox

from . import expression as ex


class StructuredFields(QGroupBox):
    """Combo boxes and a diameter; ``changed`` is emitted whenever one of them changes."""

    changed = Signal()
    TITLE = "Describe the lesion (optional)"  # short: a long title was cut in a narrow dock

    def __init__(self) -> None:
        super().__init__(self.TITLE)
        self.setToolTip("Structured description: the fields you fill compose the sentence in the Expression box")
        form = QFormLayout(self)
        self.field_combos: dict[str, QComboBox] = {}
        for key, label, choices in (("lesion_type", "Lesion type", ex.LESION_TYPES),
                                    ("location", "Segment / lobe / lung", ex.LOCATIONS), ("size", "Size", ex.SIZES),
                                    ("shape", "Shape", ex.SHAPES), ("boundary", "Boundary", ex.BOUNDARIES),
                                    ("enhancement", "Enhancement", ex.ENHANCEMENTS),
                                    ("count", "Infected areas", ex.COUNTS)):
            combo = QComboBox()
            combo.addItems(list(choices))
            form.addRow(label, combo)
            combo.currentTextChanged.connect(lambda _: self.changed.emit())
            self.field_combos[key] = combo
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(0, 500)
        self.diameter.setSuffix(" mm")
        self.diameter.setSpecialValueText("-")
        form.addRow("Diameter", self.diameter)
        self.diameter.valueChanged.connect(lambda _: self.changed.emit())

    def values(self) -> dict:
        """The fields that are filled in, by attribute name."""
        values = {key: combo.currentText() for key, combo in self.field_combos.items()}
        values["diameter_mm"] = self.diameter.value() or None
        return {k: v for k, v in values.items() if v not in ("", None)}

    def clear(self) -> None:
        """Every field back to empty (after a save: the next lesion starts from nothing)."""
        for combo in self.field_combos.values():
            combo.setCurrentIndex(0)
        self.diameter.setValue(0)
