"""Start-up: a cold ``lsms-segment`` and "napari shown -> widget ready", fresh processes interleaved (A, B, C,
A, B, C, ...) so that all see the same machine. Medians. Three configurations:

- ``quick``: ``lsms-segment`` without PyTorch (``lsms_core.quick``, the default once the model's graphs are
  cached; the benchmark builds them first into its own cache with ``lsms-segment --compiled build``, timed);
- ``pytorch``: ``--compiled off``, the text encoder on ``lsms_core.bert`` (the default of the widget);
- ``transformers``: as ``pytorch`` with ``LSMS_TEXT_ENCODER_BACKEND=transformers`` (before ``lsms_core.bert``).

- cold ``lsms-segment``: a fresh process segmenting pydicom-data's 512x512 CT slice and writing the PNG;
- widget: a fresh ``lsms-napari``-like process (viewer shown, widget docked, RefLiTS sample open, the
  default model loading in the widget's worker, as ``lsms-napari`` does): seconds from the process start
  to the window shown, and from the window shown to the model loaded (Segment answers at once).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m benchmarks.startup [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import print_table, write_results

CONFIGURATIONS = {"quick": ({}, "auto"), "pytorch": ({}, "off"),
                  "transformers": ({"LSMS_TEXT_ENCODER_BACKEND": "transformers"}, "off")}
WIDGET_CONFIGURATIONS = ("pytorch", "transformers")  # the widget loads PyTorch either way

_WIDGET_CHILD = r"""
import json, sys, time
start = time.perf_counter()
from lsms_core.allocator import reuse_freed_memory
reuse_freed_memory()
import napari
from qtpy.QtCore import QEventLoop
from qtpy.QtWidgets import QApplication
from lsms_napari.app import open_app
viewer = napari.Viewer(title="startup benchmark")
QApplication.processEvents()
shown = time.perf_counter()
widget = open_app(viewer)
loading = widget.preload_model()
wait = QEventLoop()
loading.finished.connect(wait.quit)
wait.exec()
ready = time.perf_counter()
print(json.dumps({"shown_s": shown - start, "ready_after_shown_s": ready - shown,
                  "loaded": widget.session.is_loaded(widget.checkpoint(), widget.model_picker.device()),
                  "status": widget.status.text()}))
viewer.close()
"""


def _env(configuration: str, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LSMS_TEXT_ENCODER_BACKEND", "LSMS_COMPILED")}
    return {**env, **CONFIGURATIONS[configuration][0], "LSMS_CACHE_DIR": cache}


def cold_segment(configuration: str, path: str, output: Path, cache: str) -> float:
    start = time.perf_counter()
    compiled = CONFIGURATIONS.get(configuration, ({}, configuration))[1]
    subprocess.run([sys.executable, "-m", "lsms_core.cli.segment", path, "--text", "the largest lesion",
                    "--device", "cpu", "-o", str(output), "--compiled", compiled], check=True, capture_output=True,
                   env=_env(configuration if configuration in CONFIGURATIONS else "pytorch", cache))
    return time.perf_counter() - start


def widget_ready(configuration: str, cache: str) -> dict:
    # The interpreter's own start is counted: the process's start time is taken just before it runs.
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WIDGET_CHILD], check=True, capture_output=True, text=True,
                          env=_env(configuration, cache))
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_s"] = time.perf_counter() - start
    if not figures["loaded"]:
        raise RuntimeError(f"the widget's model did not load: {figures['status']}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-gui", action="store_true", help="only the cold lsms-segment rows")
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/startup.json)")
    args = parser.parse_args(argv)
    from pydicom.data import get_testdata_file

    path = get_testdata_file("693_UNCI.dcm")
    cold: dict[str, list[float]] = {c: [] for c in CONFIGURATIONS}
    shown: dict[str, list[float]] = {c: [] for c in WIDGET_CONFIGURATIONS}
    ready: dict[str, list[float]] = {c: [] for c in WIDGET_CONFIGURATIONS}
    with tempfile.TemporaryDirectory() as folder:
        build_s = cold_segment("build", path, Path(folder) / "build.png", folder)  # the graphs, once
        for run in range(args.runs):
            for configuration in CONFIGURATIONS:
                output = Path(folder) / f"{configuration}{run}.png"
                cold[configuration].append(cold_segment(configuration, path, output, folder))
                if not args.no_gui and configuration in WIDGET_CONFIGURATIONS:
                    figures = widget_ready(configuration, folder)
                    shown[configuration].append(figures["shown_s"])
                    ready[configuration].append(figures["ready_after_shown_s"])
    rows = []
    for configuration in CONFIGURATIONS:
        row = {"configuration": configuration, "cold_lsms_segment_s": statistics.median(cold[configuration])}
        if not args.no_gui and configuration in WIDGET_CONFIGURATIONS:
            row.update(viewer_shown_s=statistics.median(shown[configuration]),
                       widget_ready_after_shown_s=statistics.median(ready[configuration]))
        rows.append(row)
    print_table(rows, [("configuration", "configuration", ""), ("cold_lsms_segment_s", "cold lsms-segment s", ".2f"),
                       ("viewer_shown_s", "viewer shown s", ".2f"),
                       ("widget_ready_after_shown_s", "ready after shown s", ".2f")])
    print(f"lsms-segment --compiled build (graphs built once, then the segmentation): {build_s:.1f} s")
    for configuration in ("pytorch", "transformers"):
        ratio = rows[list(CONFIGURATIONS).index(configuration)]["cold_lsms_segment_s"] / rows[0]["cold_lsms_segment_s"]
        print(f"cold lsms-segment, {configuration} / quick: {ratio:.2f}x")
    write_results("startup", {"rows": rows, "runs": args.runs, "build_s": build_s}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
