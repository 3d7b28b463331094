"""The model's domain warning and the small fixes of issue 11 (items 7 and 8), in a real viewer.

Outside the domain: the widget warns once per image and still segments. Samples: the head CT is called
so; the lsms-napari app opens its slice fitted to the canvas; the description box's title fits; an image
without HU gets an "auto" window, not CT presets; the MR sample's outline drawn in the file is a Labels
layer that saves as an annotation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels
from qtpy.QtCore import Qt

from conftest import type_and_segment
from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.validate import validate_dataset
from lsms_core.windows import WINDOW_PRESETS, percentile_limits
from lsms_napari.widget.image_picker import AUTO_WINDOW, FILE_WINDOW

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_TIMEOUT_MS = 180_000


def _segment(qtbot, viewer, widget, text: str):
    return type_and_segment(qtbot, viewer, widget, text, SEGMENT_TIMEOUT_MS)


# --- the model's domain --------------------------------------------------------------------------

def test_the_head_ct_warns_once_and_is_still_segmented(qtbot, open_widget):
    """On the head CT sample, "the largest lesion" marked 21,462 px of normal brain, and nothing said so."""
    viewer, widget, [image] = open_widget("dicom-ct")
    labels = _segment(qtbot, viewer, widget, "the largest lesion")
    assert labels.metadata["lsms_source"] == image.name  # segmentation ran anyway
    [warning] = widget.warned
    assert "outside what the model was trained on (CT in HU of the abdomen (liver)" in warning
    assert "looks like a head CT" in warning and "Segmenting anyway" in warning
    assert "Note: This image looks outside" in widget.status.text()  # the result's line says it too

    _segment(qtbot, viewer, widget, "the smallest lesion")
    assert len(widget.warned) == 1  # once per image
    assert "looks outside" not in widget.status.text()


def test_an_abdominal_ct_in_hu_segments_without_a_warning(qtbot, open_widget):
    viewer, widget, _ = open_widget("reflits")
    _segment(qtbot, viewer, widget, "the largest lesion")
    assert widget.warned == [] and "looks outside" not in widget.status.text()


# --- samples, view, title --------------------------------------------------------------------------

def test_the_head_ct_sample_is_called_a_head_ct():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("lsms-napari")
    names = {s.key: s.display_name for s in manifest.contributions.sample_data}
    assert names["dicom-ct"] == "Head CT slice (DICOM, 512x512)"
    assert "abdominal ct" not in (ROOT / "napari.yaml").read_text().lower()


def test_the_app_opens_the_sample_fitted_to_the_canvas(qtbot, make_napari_viewer, monkeypatch):
    """The sample slice opened cropped (napari fitted it before the dock narrowed the canvas) until Home."""
    from lsms_napari.app import FIT_DELAY_MS, open_app

    monkeypatch.setenv("LSMS_NAPARI_SECRET", "test-secret")
    viewer = make_napari_viewer(show=True)
    open_app(viewer)
    qtbot.wait(FIT_DELAY_MS + 500)
    [image] = [layer for layer in viewer.layers if isinstance(layer, Image)]
    extent = np.asarray(image.extent.world)[:, -2:]  # (min, max) of the displayed (row, column) axes
    shown = (extent[1] - extent[0]) * viewer.scene.camera.zoom  # screen pixels the slice takes
    canvas = np.asarray(viewer.canvas.size, float)  # (height, width)
    assert np.all(shown <= canvas + 1), f"slice of {shown} px cropped by a canvas of {canvas} px"
    assert np.max(shown / canvas) > 0.8  # fitted, not a postage stamp
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], extent.mean(axis=0), atol=1.0)


def test_the_description_box_title_is_not_cut(reflits_widget):
    viewer, widget, _ = reflits_widget
    box = widget.structured
    assert box.title() == "Describe the lesion (optional)"
    # The title never needs more room than the fields below it (the old one, 59 characters, did).
    assert box.fontMetrics().horizontalAdvance(box.title()) + 24 <= box.layout().sizeHint().width()


# --- windows -------------------------------------------------------------------------------------------

def test_ct_in_hu_is_offered_the_hu_presets(reflits_widget):
    viewer, widget, image = reflits_widget
    offered = [widget.window_combo.itemText(i) for i in range(widget.window_combo.count())]
    assert offered == [FILE_WINDOW, *WINDOW_PRESETS]
    widget.window_combo.setCurrentText("liver")
    assert tuple(image.contrast_limits) == WINDOW_PRESETS["liver"].limits


def test_an_mr_image_gets_an_auto_window_not_ct_presets(qtbot, open_widget):
    """A CT preset (e.g. soft tissue, -150..250) on MR values showed an all-white image."""
    viewer, widget, [image, _] = open_widget("abdominal-mr")
    offered = [widget.window_combo.itemText(i) for i in range(widget.window_combo.count())]
    assert offered == [FILE_WINDOW, AUTO_WINDOW]  # the file's own window, and auto
    widget.window_combo.setCurrentText(AUTO_WINDOW)
    low, high = image.contrast_limits
    assert (low, high) == pytest.approx(percentile_limits(np.asarray(image.data)))
    assert np.mean(image.data >= high) < 0.01  # not white: under 1% of the pixels saturate
    widget.image_combo.setCurrentText(viewer.add_image(np.zeros((8, 8), np.float32), name="plain").name)
    assert [widget.window_combo.itemText(i) for i in range(widget.window_combo.count())] == [AUTO_WINDOW]


# --- the outline drawn in the MR file ------------------------------------------------------------------

def test_the_mr_outline_drawn_in_the_file_is_a_labels_layer_that_saves(qtbot, open_widget, tmp_path):
    viewer, widget, [image, drawn] = open_widget("abdominal-mr")
    assert isinstance(drawn, Labels) and drawn.name == "Abdominal MR slice: drawn in the file"
    assert drawn.data.shape == image.data.shape and int((drawn.data > 0).sum()) == 920  # the filled outline
    assert drawn.metadata["lsms_overlay"] == {"group": "6000", "outlines": 1, "left_out": 5}
    np.testing.assert_allclose(drawn.scale, image.scale)
    viewer.layers.selection.active = drawn
    assert widget.measurements.text().startswith("Abdominal MR slice: drawn in the file: 920 px")
    qtbot.keyClicks(widget.expression, "the lesion in the right lobe")
    qtbot.mouseClick(widget.save_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: "Saved" in widget.data_status.text() or "not saved" in widget.data_status.text(),
                    timeout=60_000)
    assert "hand-drawn" in widget.data_status.text()
    root = tmp_path / "annotations"
    dataset = AnnotationDataset.open(root)
    [record] = dataset.records
    assert record["text"] == "the lesion in the right lobe" and record["modality"] == "MR"
    assert record["units"] == "raw" and record["provenance"]["origin"] == "hand-drawn"
    np.testing.assert_array_equal(dataset.read_mask(record), drawn.data > 0)
    assert [str(p) for p in validate_dataset(root) if p.severity == "error"] == []


def test_the_reader_opens_the_drawn_outline_with_the_image(make_napari_viewer):
    from pydicom.data import get_testdata_file

    viewer = make_napari_viewer()
    image, drawn = viewer.open(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"), plugin="lsms-napari")
    assert isinstance(image, Image) and isinstance(drawn, Labels)
    assert drawn.name == "MR-SIEMENS-DICOM-WithOverlays: drawn in the file"
    assert drawn.metadata["lsms_source"] == image.name and int((drawn.data > 0).sum()) == 920
