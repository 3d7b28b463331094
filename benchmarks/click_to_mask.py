"""Click-to-mask time of the widget: warm default model, a 512x512 DICOM CT slice, CPU.

Measures Segment pressed -> Labels layer in the viewer, and, from the same runs, the time the
widget's model thread spent inside ``Segmenter.segment`` (text encoding + model + pre/post-
processing), so the GUI's own share is visible. As in the app, no model work happens on the main
thread: the model is loaded through the widget (a second thread running PyTorch operations would
start a second OpenMP team and slow the model thread on this 2-core machine: docs/benchmarks.md).
Medians after one warm-up run.

    xvfb-run -a .venv/bin/python -m benchmarks.click_to_mask [--runs 10] [--json results.json]
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
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from lsms_core.allocator import reuse_freed_memory

    reuse_freed_memory()  # as lsms-napari does, before napari starts its threads
    import napari
    import torch
    from napari.layers import Labels
    from pydicom.data import get_testdata_file
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    from lsms_napari.widget import ReferringLesionSegmentWidget

    path = get_testdata_file("693_UNCI.dcm")
    viewer = napari.Viewer(show=False)
    [image] = viewer.open(path, plugin="lsms-napari")
    widget = ReferringLesionSegmentWidget(viewer)
    widget.device_combo.setCurrentText("cpu")
    loading = widget.preload_model()  # in the widget's worker, as lsms-napari does
    while loading.is_running:
        QApplication.processEvents()
        time.sleep(0.01)
    segmenter = widget.session.segmenter("default", "cpu")  # already loaded: no work here
    texts = ["the largest lesion", "the second largest lesion"]
    inside_segment: list[float] = []
    handle_proposal = widget._on_proposal

    def timed_proposal(proposal, request_id):
        inside_segment.append(proposal.seconds)  # measured on the model thread, around Segmenter.segment
        return handle_proposal(proposal, request_id)

    widget._on_proposal = timed_proposal

    def click(text: str) -> float:
        # Wait in Qt's own event loop (as napari does), not by polling: a polling main thread takes
        # the GIL every millisecond and slows the worker's hundreds of PyTorch calls.
        loop = QEventLoop()
        done = []

        def on_inserted(event):
            if isinstance(event.value, Labels):
                done.append(time.perf_counter())
                loop.quit()

        viewer.layers.events.inserted.connect(on_inserted)
        widget.expression.setText(text)
        start = time.perf_counter()
        widget.segment()
        if not done:
            loop.exec()
        viewer.layers.events.inserted.disconnect(on_inserted)
        return done[0] - start

    click(texts[0])  # warm-up (text features cached from here on, as in real use)
    widget_times = [click(texts[i % 2]) for i in range(args.runs)]
    api_times = inside_segment[1:]
    result = {"image": "693_UNCI.dcm 512x512 CT", "model": segmenter.identity["name"],
              "image_size": segmenter.checkpoint.config.preprocess.image_size, "device": "cpu",
              "threads": torch.get_num_threads(), "runs": args.runs,
              "click_to_mask_ms_median": 1000 * statistics.median(widget_times),
              "api_ms_median": 1000 * statistics.median(api_times),
              "gui_overhead_ratio": statistics.median(widget_times) / statistics.median(api_times),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(f"{'what':<38} {'median ms':>10}")
    print(f"{'click -> Labels layer (widget)':<38} {result['click_to_mask_ms_median']:>10.1f}")
    print(f"{'Segmenter.segment on the model thread':<38} {result['api_ms_median']:>10.1f}")
    print(f"{'widget / API':<38} {result['gui_overhead_ratio']:>10.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
