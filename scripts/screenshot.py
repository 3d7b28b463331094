"""Regenerate docs/screenshot.png: napari with the widget, the RefLiTS sample slice and a mask.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"


def main() -> int:
    import napari
    from napari.layers import Labels
    from qtpy.QtWidgets import QApplication

    from lsms_napari.widget import ReferringLesionSegmentWidget

    viewer = napari.Viewer(show=True, title="LSMS-napari")
    viewer.window._qt_window.resize(1500, 900)
    viewer.open_sample("lsms-napari", "reflits")
    widget = ReferringLesionSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Referring Lesion Segment", area="right")
    widget.device_combo.setCurrentText("cpu")
    widget.expression.setText("the largest lesion")
    widget.segment()
    deadline = time.time() + 300
    while not any(isinstance(layer, Labels) for layer in viewer.layers) and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    labels = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    if not labels:
        print("no mask appeared within 5 minutes", file=sys.stderr)
        return 1
    labels[0].opacity = 0.6
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
