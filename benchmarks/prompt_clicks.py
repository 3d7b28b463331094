"""Click-to-mask time of the widget's prompts: real mouse clicks on a shown napari canvas, CPU.

For each image (the RefLiTS sample slice, 128x128, and pydicom-data's 512x512 CT slice 693_UNCI.dcm):
"+ Click" pressed (the prompt model loads, on the first image, and encodes the slice in the background:
"mode on -> ready"), then clicks at points spread over the image. Measured from the mouse press to the
prompted Labels layer's data changing: the first click on the slice, then each later click (each click
asks the prompt model once, the earlier ones come from the widget's cache), and, from the same runs,
the time the model thread spent (``PromptResult.seconds``), so the GUI's share is visible.
Waits in Qt's event loop, as napari does. Medians.

    xvfb-run -a .venv/bin/python -m benchmarks.prompt_clicks [--clicks 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time

from .harness import canvas_position, median_ms, print_table, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clicks", type=int, default=10, help="later clicks per image (after the first)")
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/prompt_clicks.json)")
    args = parser.parse_args(argv)
    from lsms_core.allocator import reuse_freed_memory

    reuse_freed_memory()  # as lsms-napari does, before napari starts its threads
    import napari
    import numpy as np
    from qtpy.QtCore import QEventLoop, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    from lsms_napari.widget import ReferringLesionSegmentWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 1000)  # napari's default window on a small virtual screen leaves the
    widget = ReferringLesionSegmentWidget(viewer)  # canvas 0 px wide once the dock is in
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    native = viewer.window._qt_viewer.canvas.native
    rows = []
    model_seconds: list[float] = []
    show = widget.prompts._show

    def timed_show(image, index, pixels, proposal, result, text_mask):
        if result is not None:
            model_seconds.append(result.seconds)
        return show(image, index, pixels, proposal, result, text_mask)

    widget.prompts._show = timed_show

    def click(image, row: float, col: float) -> float:
        loop = QEventLoop()
        done = []
        prompted = [la for la in viewer.layers if la.metadata.get("lsms_prompted") and la.visible]

        def changed(event=None):
            if not done:
                done.append(time.perf_counter())
                loop.quit()

        if prompted:
            prompted[0].events.data.connect(changed)
        else:
            viewer.layers.events.inserted.connect(changed)
        start = time.perf_counter()
        QTest.mouseClick(native, Qt.LeftButton, Qt.NoModifier, canvas_position(viewer, image, row, col))
        if not done:
            loop.exec()
        (prompted[0].events.data if prompted else viewer.layers.events.inserted).disconnect(changed)
        while widget.prompts._worker is not None:  # the run's worker ends just after the layer changes
            QApplication.processEvents()
        return done[0] - start

    for key, name in (("reflits", "RefLiTS sample 128x128"), ("dicom-ct", "693_UNCI.dcm 512x512 CT")):
        for layer in list(viewer.layers):  # hidden, not removed: removing a Points layer and adding another
            layer.visible = False           # segfaults napari 0.9.2 on Mesa's llvmpipe (napari issue #6472)
        [image] = [la for la in viewer.open_sample("lsms-napari", key) if la.__class__.__name__ == "Image"]
        widget.image_combo.setCurrentText(image.name)
        QApplication.processEvents()
        viewer.reset_view()
        QApplication.processEvents()
        height, width = image.data.shape
        rng = np.random.default_rng(0)
        spots = np.column_stack([rng.uniform(0.3, 0.7, args.clicks + 1) * height,
                                 rng.uniform(0.3, 0.7, args.clicks + 1) * width])
        start = time.perf_counter()
        widget.prompts.set_mode("positive")  # loads the prompt model and encodes the slice in the background
        if widget.prompts.preparing is not None:
            ready = QEventLoop()
            widget.prompts.preparing.finished.connect(ready.quit)
            ready.exec()
        prepared = time.perf_counter() - start
        model_seconds.clear()
        first = click(image, *spots[0])
        later = [click(image, *spot) for spot in spots[1:]]
        widget.prompts.set_mode(None)
        rows.append({"image": name, "mode_on_to_ready_ms": 1000 * prepared, "first_click_ms": 1000 * first,
                     "click_to_mask_ms_median": median_ms(later),
                     "model_thread_ms_median": median_ms(model_seconds[1:]),
                     "clicks": len(later)})
    print_table(rows, [("image", "image", ""), ("mode_on_to_ready_ms", "mode on -> ready ms", ".1f"),
                       ("first_click_ms", "first click ms", ".1f"), ("click_to_mask_ms_median", "later click ms", ".1f"),
                       ("model_thread_ms_median", "model thread ms", ".1f")])
    write_results("prompt_clicks", {"device": "cpu", "rows": rows}, args.json)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
