"""The question asked when a Labels layer that was saved before is saved again: update or new?"""

from __future__ import annotations

from qtpy.QtWidgets import QMessageBox

UPDATE, NEW = "update", "new"


def ask_update_or_new(parent, layer_name: str, record_id: str) -> str | None:
    """UPDATE (replace the layer's earlier annotation ``record_id``), NEW (keep it and add another),
    or None (cancelled: save nothing). A modal question; tests replace this function."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Save annotation")
    box.setText(f'"{layer_name}" was saved before (annotation {record_id}).')
    box.setInformativeText("Update that annotation with this mask and text, or save this one as a new annotation "
                           "(both kept)?")
    update = box.addButton("Update it", QMessageBox.ButtonRole.AcceptRole)
    new = box.addButton("Save as new", QMessageBox.ButtonRole.ActionRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(update)
    box.exec()
    clicked = box.clickedButton()
    return UPDATE if clicked is update else NEW if clicked is new else None
