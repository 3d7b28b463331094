"""A line edit for a path with a "..." button beside it (checkpoint file, dataset folder)."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton


def path_field(placeholder: str, browse: Callable[[], None]) -> tuple[QHBoxLayout, QLineEdit]:
    """The row to add to a layout, and its line edit; ``browse`` runs when "..." is clicked."""
    row = QHBoxLayout()
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    button = QPushButton("...")
    button.clicked.connect(browse)
    row.addWidget(edit)
    row.addWidget(button)
    return row, edit
