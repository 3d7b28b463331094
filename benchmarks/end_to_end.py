"""End to end on a real 512x512 DICOM CT slice (pydicom's 693_UNCI.dcm), CPU.

1. ``lsms-segment`` cold: a fresh process reading the DICOM, loading the default model and
   the text encoder, segmenting, writing the PNG (median of ``--cold-runs`` processes, and
   their peak RSS).
2. The warm API, ``Segmenter.segment``: pre-processing + text encoding + model + resizing the
   mask back to 512x512. With a new expression each call (text encoding included) and with a
   repeated one (cached word features, as when the user re-runs after an edit), at the default
   model's own input size and at 480x480 (same weights; the issue's target size).
3. The widget's click-to-mask time (benchmarks.click_to_mask) and the peak RSS of napari with
   the plugin docked, the default model loaded and one mask made; both need a display, so they
   run in child processes under ``xvfb-run -a`` when there is none.

    .venv/bin/python -m benchmarks.end_to_end [--runs 15] [--cold-runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import children_peak_rss_mb, interleaved, median_ms, print_table, spread_ms, write_results

EXPRESSIONS = ["the largest lesion", "the second largest lesion", "the hypodense lesion in the right lobe",
               "the lesion near the surface of the liver", "the smallest round lesion", "the deep lesion"]

NAPARI_RSS_SCRIPT = """
import json, time
import napari
from benchmarks.harness import peak_rss_mb
from napari.layers import Labels
from qtpy.QtWidgets import QApplication
from lsms_napari.widget import ReferringLesionSegmentWidget
viewer = napari.Viewer(show=True)
viewer.open(%(path)r, plugin="lsms-napari")
widget = ReferringLesionSegmentWidget(viewer)
viewer.window.add_dock_widget(widget, name="Referring Lesion Segment", area="right")
widget.device_combo.setCurrentText("cpu")
widget.session.segmenter("default", "cpu")
widget.expression.setText("the largest lesion")
widget.segment()
deadline = time.time() + 120
while not any(isinstance(layer, Labels) for layer in viewer.layers) and time.time() < deadline:
    QApplication.processEvents()
    time.sleep(0.005)
made = any(isinstance(layer, Labels) for layer in viewer.layers)
print("RSS_JSON " + json.dumps({"peak_rss_mb": peak_rss_mb(), "mask_made": made}))
viewer.close()
"""


def ct_path() -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file("693_UNCI.dcm")


def display_prefix() -> list[str] | None:
    """How to run a child with a display: as is, under xvfb-run, or None when impossible."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return []
    return ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"] if shutil.which("xvfb-run") else None


def cold_cli(path: str, runs: int) -> dict:
    """Wall time and peak RSS of fresh ``lsms-segment`` processes."""
    command = [sys.executable, "-m", "lsms_core.cli.segment", path, "--text", "the largest lesion",
               "--device", "cpu"]
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(runs):
            start = time.perf_counter()
            subprocess.run(command + ["-o", str(Path(folder) / f"mask{i}.png")], check=True,
                           capture_output=True, text=True)
            times.append(time.perf_counter() - start)
    return {"ms": median_ms(times), "runs": runs, "peak_rss_mb": children_peak_rss_mb()}


def warm_api(path: str, runs: int) -> list[dict]:
    """Interleaved warm calls: {own size, 480} x {new expression, cached expression}."""
    import torch

    from lsms_core.image_io import read_slice
    from lsms_core.inference import Segmenter

    slice_ = read_slice(path)
    own = Segmenter("default", device="cpu")
    at_480 = Segmenter("default", device="cpu")
    config = at_480.checkpoint.config
    at_480.checkpoint.config = dataclasses.replace(
        config, preprocess=dataclasses.replace(config.preprocess, image_size=480))
    own_size = config.preprocess.image_size
    counter = iter(range(10 ** 6))

    def fresh(segmenter):
        # A different expression every call: the word features are never cached.
        def call():
            i = next(counter)
            return segmenter.segment(slice_, f"{EXPRESSIONS[i % len(EXPRESSIONS)]} ({i})")
        return call

    def forward_only(segmenter):
        # The share of the API call that is the network itself (no pre/post-processing, no text encoding).
        from lsms_core.preprocessing import to_model_input

        image = to_model_input(slice_.pixels, segmenter.checkpoint.config.preprocess, slice_.hounsfield)
        image = image[None].contiguous(memory_format=torch.channels_last)
        words, mask = segmenter.encode_text("the largest lesion")
        return lambda: segmenter.model(image, words, mask)

    calls = {f"API {own_size}x{own_size} (default model), new expression": fresh(own),
             f"API {own_size}x{own_size} (default model), repeated expression":
                 lambda: own.segment(slice_, "the largest lesion"),
             "model forward alone, 480x480 (same slice, cached words)": forward_only(at_480),
             "API 480x480, new expression": fresh(at_480),
             "API 480x480, repeated expression": lambda: at_480.segment(slice_, "the largest lesion")}
    with torch.inference_mode():
        times = interleaved(calls, runs=runs, warmup=2)
    rows = []
    for name, seconds in times.items():
        low, high = spread_ms(seconds)
        rows.append({"what": name, "ms": median_ms(seconds), "ms_p25": low, "ms_p75": high})
    return rows


def click_to_mask(runs: int, prefix: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "click.json"
        subprocess.run(prefix + [sys.executable, "-m", "benchmarks.click_to_mask", "--runs", str(runs),
                                 "--json", str(out)], check=True, capture_output=True, text=True)
        return json.loads(out.read_text())


def napari_peak_rss(path: str, prefix: list[str]) -> dict:
    done = subprocess.run(prefix + [sys.executable, "-c", NAPARI_RSS_SCRIPT % {"path": path}],
                          check=True, capture_output=True, text=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RSS_JSON "))
    return json.loads(line[len("RSS_JSON "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="warm API rounds")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--click-runs", type=int, default=10)
    parser.add_argument("--no-gui", action="store_true", help="skip the napari measurements")
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/end_to_end.json)")
    args = parser.parse_args(argv)
    path = ct_path()
    rows = []
    cold = cold_cli(path, args.cold_runs)
    rows.append({"what": "lsms-segment, cold process (load + segment + write PNG)", "ms": cold["ms"],
                 "peak_rss_mb": cold["peak_rss_mb"]})
    rows += warm_api(path, args.runs)
    prefix = None if args.no_gui else display_prefix()
    click = rss = None
    if prefix is not None:
        click = click_to_mask(args.click_runs, prefix)
        rows.append({"what": f"widget click -> Labels layer ({click['image_size']}x{click['image_size']} "
                             "default model)", "ms": click["click_to_mask_ms_median"]})
        rss = napari_peak_rss(path, prefix)
        rows.append({"what": "napari + plugin + default model, after one mask", "peak_rss_mb": rss["peak_rss_mb"]})
    print(f"\nEnd to end, 512x512 DICOM CT (693_UNCI.dcm), CPU, medians")
    print_table(rows, [("what", "what", ""), ("ms", "ms", ".1f"), ("ms_p25", "p25", ".1f"),
                       ("ms_p75", "p75", ".1f"), ("peak_rss_mb", "peak RSS MiB", ".0f")])
    if prefix is None and not args.no_gui:
        print("napari rows skipped: no display and no xvfb-run")
    write_results("end_to_end", {"image": "693_UNCI.dcm 512x512 CT", "rows": rows, "click_to_mask": click,
                                 "napari": rss}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
