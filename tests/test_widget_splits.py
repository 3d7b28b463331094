"""Split counts and the split of a patient at save time, in the widget (issue 11, item 4).

The widget shows the dataset's annotations and patients per split when a dataset folder is chosen and
after each save; "Split (this patient)" puts the saved annotation's whole split group into a chosen split,
and no slice ever ends up in two splits.
"""

from __future__ import annotations

import shutil

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.validate import SplitCount, validate_dataset
from lsms_napari.widget.splits_row import counts_text


def _click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()!r} is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def _draw(viewer, image, name: str, rows: slice) -> Labels:
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name=name)
    data = labels.data.copy()
    data[rows, 40:52] = 1
    labels.data = data
    viewer.layers.selection.active = labels
    return labels


def _save(qtbot, widget, text: str, split: str) -> str:
    widget.expression.clear()
    qtbot.keyClicks(widget.expression, text)
    widget.split_combo.setCurrentText(split)
    before = widget.data_status.text()
    _click(qtbot, widget.save_button)
    qtbot.waitUntil(lambda: widget.data_status.text() != before and not widget._saving, timeout=60_000)
    return widget.data_status.text()


def test_counts_are_shown_when_a_dataset_folder_is_typed(qtbot, reflits_widget, mini_dataset, tmp_path):
    viewer, widget, _ = reflits_widget
    dataset = tmp_path / "mini"
    shutil.copytree(mini_dataset, dataset)
    widget.dataset_path.clear()
    qtbot.keyClicks(widget.dataset_path, str(dataset))
    qtbot.waitUntil(lambda: widget.split_counts.text().startswith("Annotations per split: train"), timeout=5_000)
    assert widget.split_counts.text() == ("Annotations per split: train 16 (4 patients), val 6 (2 patients), "
                                          "test 0 (empty)")
    widget.dataset_path.clear()
    qtbot.keyClicks(widget.dataset_path, str(tmp_path / "new"))
    qtbot.waitUntil(lambda: "none yet" in widget.split_counts.text(), timeout=5_000)


def test_a_chosen_split_moves_the_patients_whole_group_and_the_counts_follow(qtbot, reflits_widget, tmp_path):
    viewer, widget, image = reflits_widget
    root = tmp_path / "annotations"
    _draw(viewer, image, "first lesion", slice(40, 50))
    text = _save(qtbot, widget, "the first lesion", "val")
    assert text.startswith("Saved ") and "(val)" in text
    assert widget.split_combo.currentText() == "auto"  # the choice was for that save only
    assert widget.split_counts.text() == "Annotations per split: train 0 (empty), val 1 (1 patient), test 0 (empty)"

    _draw(viewer, image, "second lesion", slice(60, 70))
    text = _save(qtbot, widget, "the second lesion", "test")
    assert "(test)" in text and "moved from val to test (1 earlier annotation with it)" in text
    records = AnnotationDataset.open(root).records
    assert [r["split"] for r in records] == ["test", "test"] and len({r["split_group"] for r in records}) == 1
    assert widget.split_counts.text() == "Annotations per split: train 0 (empty), val 0 (empty), test 2 (1 patient)"

    _draw(viewer, image, "third lesion", slice(80, 90))
    assert "(test)" in _save(qtbot, widget, "the third lesion", "auto")  # auto keeps the patient's split
    assert [str(p) for p in validate_dataset(root) if p.severity == "error"] == []


def test_the_same_slice_under_another_patient_never_lands_in_a_second_split(qtbot, reflits_widget, tmp_path):
    viewer, widget, image = reflits_widget
    root = tmp_path / "annotations"
    _draw(viewer, image, "on the sample", slice(40, 50))
    _save(qtbot, widget, "the lesion", "test")
    copy = viewer.add_image(np.array(image.data), name="same pixels, no patient")  # another split group
    widget.image_combo.setCurrentText(copy.name)
    _draw(viewer, copy, "on the copy", slice(60, 70))
    text = _save(qtbot, widget, "the other lesion", "train")
    assert text.startswith("not saved: this slice is already annotated in split 'test'")
    assert "choose 'test' under Split" in text
    assert len(AnnotationDataset.open(root).records) == 1
    assert "(test)" in _save(qtbot, widget, "the other lesion", "auto")  # a new group joins the slice's split
    records = AnnotationDataset.open(root).records
    assert len({r["split_group"] for r in records}) == 2 and {r["split"] for r in records} == {"test"}
    assert [str(p) for p in validate_dataset(root) if p.severity == "error"] == []


def test_counts_text_names_empty_splits_and_patients():
    counts = {"train": SplitCount(3, 2, 2), "val": SplitCount(1, 1, 1), "test": SplitCount()}
    assert counts_text(counts) == "Annotations per split: train 3 (2 patients), val 1 (1 patient), test 0 (empty)"
