"""The Qt binding does not leak references to None (PySide6 6.12.0 does, one per call).

On CPython < 3.12 None is an ordinary object: a binding that drops a reference to it on each Qt
call that returns nothing makes a long napari session abort with "Fatal Python error:
none_dealloc". pyproject.toml keeps PySide6 below 6.12 for that reason; this test catches a binding
with the bug, whatever its version.
"""

from __future__ import annotations

import sys


def test_qt_calls_keep_the_references_to_none(qapp):
    from qtpy.QtWidgets import QLabel

    label = QLabel()
    before = sys.getrefcount(None)
    for i in range(2000):
        label.setText(str(i))
        label.setEnabled(bool(i % 2))
    lost = before - sys.getrefcount(None)
    assert lost < 100, f"{lost} references to None lost over 4000 Qt calls: this Qt binding has a refcount bug"
