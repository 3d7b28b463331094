"""The dataset's split counts and the "Split" choice of the "Annotations" box.

The counts line says, per split, how many annotations and patients the dataset folder holds (read when
the folder is chosen and after each save). The choice applies to the saved annotation's split group
(its patient): "auto" keeps the group's split, or draws one for a new group (split_fractions in
dataset.json); train / val / test moves the whole group there (lsms_core's set-split: an image
annotated in another group of another split refuses the move, so no slice is ever in two splits).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout

from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.dataset.schema import SPLITS
from lsms_core.dataset.validate import SplitCount, split_counts

AUTO = "auto"
REFRESH_DELAY_MS = 300  # after the folder's text changes, so typing a path does not read at every key


def counts_text(counts: dict[str, SplitCount]) -> str:
    """'Annotations per split: train 16 (5 patients), val 6 (1 patient), test 0 (empty)'."""
    parts = []
    for split, count in counts.items():
        if count.annotations == 0:
            parts.append(f"{split} 0 (empty)")
        else:
            parts.append(f"{split} {count.annotations} ({count.patients} patient{'s' if count.patients != 1 else ''})")
    return "Annotations per split: " + ", ".join(parts)


def dataset_counts_text(folder: str) -> str:
    """The counts line for a dataset folder (what to say when there is none yet, or it is unreadable)."""
    folder = folder.strip()
    if not folder:
        return ""
    if not (Path(folder) / "dataset.json").is_file():
        return "Annotations per split: none yet (the first save creates the dataset in this folder)."
    try:
        return counts_text(split_counts(AnnotationDataset.open(folder)))
    except (DatasetError, OSError) as error:
        return f"Annotations per split: cannot read the dataset ({error})."


class SplitsRow(QVBoxLayout):
    """The counts line, and "Split [auto|train|val|test]" for the next save's patient."""

    def __init__(self, parent, dataset_path) -> None:
        super().__init__()
        self.dataset_path = dataset_path
        self.counts = QLabel("")
        self.counts.setWordWrap(True)
        self.split_combo = QComboBox()
        self.split_combo.addItems([AUTO, *SPLITS])
        self.split_combo.setToolTip(
            "The split of the saved annotation's patient (its split group).\n"
            "auto: the patient keeps its split; a new patient's is drawn from split_fractions in dataset.json.\n"
            "train / val / test: the patient's annotations all move there (no patient is ever in two splits;\n"
            "a slice also annotated under another patient in another split refuses the move).\n"
            "Back to auto after each save.")
        row = QHBoxLayout()
        row.addWidget(QLabel("Split (this patient)"))
        row.addWidget(self.split_combo, 1)
        self.addLayout(row)
        self.addWidget(self.counts)
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.refresh)
        dataset_path.textChanged.connect(lambda _: self._timer.start(REFRESH_DELAY_MS))

    def chosen_split(self) -> str | None:
        """The split to put the saved annotation's group in, or None for auto."""
        text = self.split_combo.currentText()
        return None if text == AUTO else text

    def reset(self) -> None:
        self.split_combo.setCurrentText(AUTO)

    def refresh(self) -> str:
        """Read the dataset folder's split counts again; the text shown."""
        self._timer.stop()
        text = dataset_counts_text(self.dataset_path.text())
        self.counts.setText(text)
        return text

    def show_counts(self, counts: dict[str, SplitCount]) -> None:
        """Counts a save just computed (no second read of the dataset)."""
        self._timer.stop()
        self.counts.setText(counts_text(counts))
