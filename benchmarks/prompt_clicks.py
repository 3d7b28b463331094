"""Click-to-mask time of the widget's prompts: real mouse clicks on a shown napari canvas, CPU.

For each image (the RefLiTS sample slice, 128x128, and pydicom-data's 512x512 CT slice 693_UNCI.dcm):
"+ Click" pressed (the prompt model loads, on the first image, and encodes the slice in the background:
"mode on -> ready"), then clicks at points spread over the image. Measured from the mouse press to the
prompted Labels layer's data changing: the first click on the slice, then each later click (each click
asks the prompt model once, the earlier ones come from the widget's cache), and, from the same runs,
the time the model thread spent (``PromptResult.seconds``), so the GUI's share is visible.
Waits in Qt's event loop, as napari does. Medians.

    xvfb-run -a .venv/bin/python -m benchmarks.prompt_clicks [--clicks 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clicks", type=int, default=10, help="later clicks per image (after the first)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from lsms_core.allocator import reuse_freed_memory

    reuse_freed_memory()  # as lsms-napari does, before napari starts its threads
    import napari
    import numpy as np
    import torch
    from qtpy.QtCore import QEventLoop, QPoint, Qt
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

    def position(layer, row: float, col: float) -> QPoint:
        world = np.asarray(layer.data_to_world([row, col]))
        camera = viewer.scene.camera
        y, x = (world - np.asarray(camera.center)[-2:]) * camera.zoom + np.array([native.height(), native.width()]) / 2
        return QPoint(int(round(x)), int(round(y)))

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
        QTest.mouseClick(native, Qt.LeftButton, Qt.NoModifier, position(image, row, col))
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
                     "click_to_mask_ms_median": 1000 * statistics.median(later),
                     "model_thread_ms_median": 1000 * statistics.median(model_seconds[1:]),
                     "clicks": len(later)})
    result = {"rows": rows, "device": "cpu", "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(f"{'image':<26} {'mode on -> ready ms':>20} {'first click ms':>15} {'later click ms':>15} "
          f"{'model thread ms':>16}")
    for row in rows:
        print(f"{row['image']:<26} {row['mode_on_to_ready_ms']:>20.1f} {row['first_click_ms']:>15.1f} "
              f"{row['click_to_mask_ms_median']:>15.1f} {row['model_thread_ms_median']:>16.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
