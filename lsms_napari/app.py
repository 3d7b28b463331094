"""``lsms-napari``: napari with the widget docked, the RefLiTS sample slice open and the default model loading."""

from __future__ import annotations

import sys

FIT_DELAY_MS = 200  # the window's layout settles within a few event-loop turns


def open_app(viewer):
    """Dock the widget in ``viewer``, open the RefLiTS sample and fit it to the canvas; the widget.

    The widget is docked first and the view reset after the sample is added, and again once the window
    is laid out: napari fits the first layer to the canvas as it was before the dock narrowed it, and
    the slice opened cropped until Home was pressed."""
    from qtpy.QtCore import QTimer

    from .widget import ReferringLesionSegmentWidget

    widget = ReferringLesionSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Referring Lesion Segment", area="right")
    viewer.open_sample("lsms-napari", "reflits")
    viewer.reset_view()
    # Once more after Qt has laid out the window with its dock (a QTimer object, not QTimer.singleShot:
    # see workers.py on PySide6).
    widget.fit_timer = QTimer(widget)
    widget.fit_timer.setSingleShot(True)
    widget.fit_timer.timeout.connect(viewer.reset_view)
    widget.fit_timer.start(FIT_DELAY_MS)
    widget.expression.setText("the largest lesion")
    return widget


def main(argv: list[str] | None = None) -> int:
    from lsms_core.allocator import reuse_freed_memory

    reuse_freed_memory()  # before napari and Qt start threads, so the model's worker shares one heap
    import napari

    viewer = napari.Viewer(title="LSMS-napari: referring lesion segmentation")
    widget = open_app(viewer)
    widget.preload_model()
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
