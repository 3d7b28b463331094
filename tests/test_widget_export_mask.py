"""Export mask in the widget: a followed or drawn 3-D mask as NIfTI over its image, as DICOM SEG over the
DICOM series it lies on (identifiers only when the box is ticked); what cannot be exported says why."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from napari.layers import Labels
from qtpy.QtCore import Qt

from lsms_core.volume_io import read_volume
from lsms_napari.widget import ReferringLesionSegmentWidget

TIMEOUT_MS = 60_000


def _widget(viewer):
    widget = ReferringLesionSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    return widget


def _press_export(qtbot, widget, monkeypatch, path) -> None:
    """Press Export mask... and answer its file dialog with ``path``."""
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(path), ""))
    qtbot.mouseClick(widget.export_mask_button, Qt.LeftButton)


def _export(qtbot, widget, monkeypatch, path) -> None:
    _press_export(qtbot, widget, monkeypatch, path)
    qtbot.waitUntil(lambda: "Exported" in widget.data_status.text() or "failed" in widget.data_status.text(),
                    timeout=TIMEOUT_MS)


def test_a_drawn_volume_mask_exports_as_nifti_over_its_image(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    [volume] = viewer.open_sample("lsms-napari", "lits-volume")
    widget = _widget(viewer)
    data = np.zeros(volume.data.shape, np.uint8)
    data[40:44, 50:60, 60:70] = 1
    labels = viewer.add_labels(data, name="drawn", metadata={"lsms_source": volume.name})
    viewer.layers.selection.active = labels
    _export(qtbot, widget, monkeypatch, tmp_path / "lesion")  # no suffix: NIfTI, .nii.gz added
    assert "Exported" in widget.data_status.text(), widget.data_status.text()
    written = read_volume(tmp_path / "lesion.nii.gz", hounsfield=False)
    np.testing.assert_array_equal(written.pixels > 0, data > 0)
    _press_export(qtbot, widget, monkeypatch, tmp_path / "seg.dcm")
    qtbot.waitUntil(lambda: "failed" in widget.data_status.text(), timeout=TIMEOUT_MS)
    assert "not read from DICOM files" in widget.data_status.text() and not (tmp_path / "seg.dcm").exists()


def test_a_mask_on_a_dicom_series_exports_as_seg_referencing_its_slices(qtbot, make_napari_viewer, tmp_path,
                                                                        monkeypatch):
    from tests.conftest import write_ct_series

    folder = tmp_path / "series"
    folder.mkdir()
    write_ct_series(folder, header={"PatientName": "Doe^Jane", "PatientID": "MRN-777",
                                    "FrameOfReferenceUID": pydicom.uid.generate_uid()})
    viewer = make_napari_viewer()
    [stack] = viewer.open(str(folder), plugin="lsms-napari")
    widget = _widget(viewer)
    data = np.zeros(stack.data.shape, np.uint8)
    data[0, 200:230, 200:240] = 1
    data[2, 210:220, 210:225] = 1
    labels = viewer.add_labels(data, name="drawn", metadata={"lsms_source": stack.name})
    viewer.layers.selection.active = labels
    widget.expression.setText("the largest lesion")
    _export(qtbot, widget, monkeypatch, tmp_path / "seg.dcm")
    assert "Exported" in widget.data_status.text() and "identifiers" not in widget.data_status.text()
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    uids = stack.metadata["lsms"]["sop_instance_uids"]
    frames = sorted(str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                    for item in seg.PerFrameFunctionalGroupsSequence)
    assert frames == sorted([uids[0], uids[2]])
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), data > 0)
    description = seg.get_segment_description(1)
    assert description.segment_label == "the largest lesion"
    assert description.algorithm_type.value == "SEMIAUTOMATIC"  # drawn by hand
    raw = (tmp_path / "seg.dcm").read_bytes()
    assert b"Doe^Jane" not in raw and b"MRN-777" not in raw
    qtbot.keyClick(widget.include_identifiers, Qt.Key_Space)  # the box ticked from the keyboard
    assert widget.include_identifiers.isChecked()
    widget.data_status.setText("")
    _export(qtbot, widget, monkeypatch, tmp_path / "seg-identified.dcm")
    assert "with patient identifiers" in widget.data_status.text()
    assert str(pydicom.dcmread(tmp_path / "seg-identified.dcm").PatientName) == "Doe^Jane"


def test_export_needs_a_labels_layer(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    viewer.open_sample("lsms-napari", "reflits")
    widget = _widget(viewer)
    _press_export(qtbot, widget, monkeypatch, tmp_path / "x.nii.gz")
    assert "select the mask to export" in widget.data_status.text() and not (tmp_path / "x.nii.gz").exists()
    assert not any(isinstance(layer, Labels) for layer in viewer.layers)
