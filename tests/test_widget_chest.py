"""The chest samples in a real viewer: the automatic model choice, typing, Segment, Save (pytest-qt, Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from qtpy.QtCore import Qt

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.validate import validate_dataset
from lsms_core.metrics import dice_iou
from lsms_napari.widget.model_picker import SHIPPED_BY_TITLE

from conftest import type_and_segment
from test_qata_import import QATA

SEGMENT_TIMEOUT_MS = 180_000


@pytest.fixture
def chest_widget(open_widget):
    """chest_widget(sample key) -> (viewer, widget, image): conftest's open_widget on a one-layer sample."""
    def make(key: str):
        viewer, widget, [image] = open_widget(key)
        return viewer, widget, image

    return make


def _segment(qtbot, viewer, widget, text: str):
    return type_and_segment(qtbot, viewer, widget, text, SEGMENT_TIMEOUT_MS)


def test_the_xray_sample_gets_the_xray_model_segments_and_saves(qtbot, chest_widget, tmp_path):
    viewer, widget, image = chest_widget("qata-radiograph")
    labels = _segment(qtbot, viewer, widget, "bilateral pulmonary infection, lower left lung and lower right lung")
    assert "Model: chest X-ray (lsms-qata): a radiograph (DICOM Modality DX)." in widget.status.text()
    assert "(lsms-qata)" in widget.status.text() and "outside what the model" not in widget.status.text()
    truth = np.asarray(Image.open(QATA / "mask_sub-s09655_ses-e16547_run-1_bp-chest_vp-pa_cr.png")) > 0
    assert dice_iou(labels.data > 0, truth)[0] > 0.5
    qtbot.mouseClick(widget.save_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: "Saved" in widget.data_status.text(), timeout=60_000)
    dataset = AnnotationDataset.open(tmp_path / "annotations")
    [record] = dataset.records
    assert record["modality"] == "DX" and record["provenance"]["model"]["name"] == "lsms-qata"
    assert [p for p in validate_dataset(tmp_path / "annotations") if p.severity == "error"] == []


def test_the_left_lung_is_the_patients_left_on_the_xray_sample(qtbot, chest_widget):
    """The patient's left lung is on the image's right of a frontal radiograph."""
    viewer, widget, image = chest_widget("qata-radiograph")
    left = _segment(qtbot, viewer, widget, "the infection in the left lung").data > 0
    right = _segment(qtbot, viewer, widget, "the infection in the right lung").data > 0
    assert left.any() and right.any()
    assert np.nonzero(left)[1].mean() > np.nonzero(right)[1].mean()


def test_a_model_picked_by_hand_wins_over_the_automatic_choice(qtbot, chest_widget):
    viewer, widget, image = chest_widget("lung-ct")
    assert widget.checkpoint() == "lung-ct"
    title = next(t for t, name in SHIPPED_BY_TITLE.items() if name == "default")
    widget.model_combo.setCurrentText(title)
    assert widget.checkpoint() == "default"
    _segment(qtbot, viewer, widget, "the lung infection")
    assert "Model:" not in widget.status.text() and "(lsms-reflits)" in widget.status.text()


def test_the_composer_writes_the_xray_sentence_from_the_fields(qtbot, chest_widget):
    viewer, widget, image = chest_widget("qata-radiograph")
    combos = widget.structured.field_combos
    combos["lesion_type"].setCurrentText("bilateral pulmonary infection")
    combos["count"].setCurrentText("two")
    combos["location"].setCurrentText("lower left lung and lower right lung")
    assert widget.expression.text() == ("bilateral pulmonary infection, two infected areas, lower left lung and lower "
                                        "right lung.")
    combos["count"].setCurrentText("")
    combos["lesion_type"].setCurrentText("consolidation")
    combos["location"].setCurrentText("left lung")
    assert widget.expression.text() == "The consolidation in the left lung."
