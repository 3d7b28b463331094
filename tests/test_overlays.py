"""Outlines drawn in a DICOM file's overlay plane become a filled mask (issue 11, item 8), without Qt."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from scipy import ndimage

from lsms_core.dicom import read_dicom
from lsms_core.overlays import drawn_overlays, filled_outlines

MR = "MR-SIEMENS-DICOM-WithOverlays.dcm"


def test_the_mr_samples_lesion_outline_is_filled_and_its_text_and_box_left_out():
    """Overlay 6000 of the Siemens MR holds a liver lesion's outline, three letters and a box with an F."""
    dataset = pydicom.dcmread(get_testdata_file(MR))
    plane = dataset.overlay_array(0x6000) > 0
    [overlay] = drawn_overlays(dataset, plane.shape)
    assert overlay.group == 0x6000 and overlay.outlines == 1 and overlay.left_out == 5
    assert overlay.description == "Siemens MedCom Object Graphics"
    strokes, _ = ndimage.label(plane, structure=np.ones((3, 3)))
    lesion = strokes == 1 + np.argmax(np.bincount(strokes.ravel())[1:])  # the longest stroke: the outline
    assert lesion.sum() == 128 and ndimage.find_objects(lesion.astype(int))[0] == (slice(239, 274), slice(46, 81))
    np.testing.assert_array_equal(overlay.mask, ndimage.binary_fill_holes(lesion))
    assert overlay.mask.sum() == 920 and not overlay.mask[393:423, 393:423].any()  # the box is not kept


def test_reading_the_file_carries_its_drawn_outlines():
    volume = read_dicom(get_testdata_file(MR))
    [(index, overlay)] = volume.drawn
    assert index == 0 and overlay.mask.shape == volume.pixels.shape[1:] and overlay.mask.sum() == 920
    assert read_dicom(get_testdata_file("CT_small.dcm")).drawn == []


def test_filled_outlines_keeps_closed_empty_outlines_only():
    plane = np.zeros((60, 60), bool)
    plane[5:20, 5] = plane[5:20, 19] = plane[5, 5:20] = plane[19, 5:20] = True  # a closed square: kept
    plane[30:40, 30] = True  # an open stroke: left out
    plane[40:58, 40] = plane[40:58, 57] = plane[40, 40:58] = plane[57, 40:58] = True  # a box ...
    plane[45:50, 48] = True  # ... with a stroke inside: left out
    mask, kept, left_out = filled_outlines(plane)
    assert (kept, left_out) == (1, 3)
    assert mask[5:20, 5:20].all() and mask.sum() == 15 * 15
