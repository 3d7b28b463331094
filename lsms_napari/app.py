"""``lsms-napari``: napari with the widget docked, the RefLiTS sample slice open and the default model loading."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lsms_core.allocator import reuse_freed_memory

    reuse_freed_memory()  # before napari and Qt start threads, so the model's worker shares one heap
    import napari

    from .widget import ReferringLesionSegmentWidget

    viewer = napari.Viewer(title="LSMS-napari: referring lesion segmentation")
    viewer.open_sample("lsms-napari", "reflits")
    widget = ReferringLesionSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Referring Lesion Segment", area="right")
    widget.expression.setText("the largest lesion")
    widget.preload_model()
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
