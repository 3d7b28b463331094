"""Click-to-mask time of the widget: warm default model, a 512x512 DICOM CT slice, CPU.

Measures, in one process and interleaved, (a) the widget: Segment pressed -> Labels layer in the
viewer, and (b) the warm inference API alone (text encoding + model + pre/post-processing) on the
same slice, so the GUI's own share is visible. Medians after one warm-up run.

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
    from qtpy.QtWidgets import QApplication

    from lsms_core.image_io import read_slice
    from lsms_napari.widget import ReferringLesionSegmentWidget

    path = get_testdata_file("693_UNCI.dcm")
    viewer = napari.Viewer(show=False)
    [image] = viewer.open(path, plugin="lsms-napari")
    widget = ReferringLesionSegmentWidget(viewer)
    widget.device_combo.setCurrentText("cpu")
    segmenter = widget.session.segmenter("default", "cpu")  # warm: loaded before the first click
    slice_ = read_slice(path)
    texts = ["the largest lesion", "the second largest lesion"]

    def click(text: str) -> float:
        before = sum(isinstance(layer, Labels) for layer in viewer.layers)
        widget.expression.setText(text)
        start = time.perf_counter()
        widget.segment()
        while sum(isinstance(layer, Labels) for layer in viewer.layers) == before:
            QApplication.processEvents()
            time.sleep(0.001)
        return time.perf_counter() - start

    def api(text: str) -> float:
        start = time.perf_counter()
        segmenter.segment(slice_, text)
        return time.perf_counter() - start

    click(texts[0]), api(texts[0])  # warm-up (text features cached from here on, as in real use)
    widget_times, api_times = [], []
    for i in range(args.runs):
        text = texts[i % 2]
        widget_times.append(click(text))
        api_times.append(api(text))
    result = {"image": "693_UNCI.dcm 512x512 CT", "model": segmenter.identity["name"],
              "image_size": segmenter.checkpoint.config.preprocess.image_size, "device": "cpu",
              "threads": torch.get_num_threads(), "runs": args.runs,
              "click_to_mask_ms_median": 1000 * statistics.median(widget_times),
              "api_ms_median": 1000 * statistics.median(api_times),
              "gui_overhead_ratio": statistics.median(widget_times) / statistics.median(api_times),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(f"{'what':<38} {'median ms':>10}")
    print(f"{'click -> Labels layer (widget)':<38} {result['click_to_mask_ms_median']:>10.1f}")
    print(f"{'Segmenter.segment (warm API)':<38} {result['api_ms_median']:>10.1f}")
    print(f"{'widget / API':<38} {result['gui_overhead_ratio']:>10.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
