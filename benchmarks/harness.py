"""What every benchmark shares: interleaved timing, the machine, MAC counts, tables and JSON.

These machines are noisy (shared cores, frequency changes), so comparisons are measured in one
process with the candidates interleaved run by run, and reported as medians and as ratios of
medians; absolute figures are only as good as the machine was quiet.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(candidates: dict[str, Callable[[], Any]], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each candidate, ``runs`` rounds of one call each, after ``warmup`` rounds."""
    for _ in range(warmup):
        for call in candidates.values():
            call()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, call in candidates.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median_ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def spread_ms(seconds: list[float]) -> tuple[float, float]:
    """(25th, 75th) percentile in ms: how noisy the run was."""
    q = statistics.quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else [seconds[0]] * 3
    return 1000.0 * q[0], 1000.0 * q[2]


def matmul_call(size: int = 2048) -> tuple[Callable[[], Any], float]:
    """A square fp32 matmul on the CPU and its FLOPs: the machine's practical compute limit."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    return (lambda: torch.mm(a, b)), 2.0 * size ** 3


def count_macs(call: Callable[[], Any]) -> float:
    """Multiply-accumulates of one call (``FlopCounterMode`` FLOPs / 2; convs, matmuls, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 2.0


def params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


WORD_TOKENS = 20  # word features per expression, as lsms-train's frozen-encoder cache feeds them


def lsms_model(device, channels_last: bool, train: bool = False):
    """The default ``lsms`` preset with text (C_l 384), seeded, on ``device``, NHWC when ``channels_last``."""
    import torch

    from lsms_core.config import preset
    from lsms_core.model import build_model

    torch.manual_seed(0)
    model = build_model(preset("lsms", text_dim=384)).to(device)
    model.train(train)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def random_batch(device, batch: int, size: int, channels_last: bool):
    """A random (B,3,S,S) image (NHWC when ``channels_last``), (B,WORD_TOKENS,384) word features and their mask."""
    import torch

    image = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    return image, torch.randn(batch, WORD_TOKENS, 384, device=device), torch.ones(batch, WORD_TOKENS, device=device)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    Linux's VmHWM where there is one: after fork+exec, ``ru_maxrss`` still carries the parent's
    peak, which would make a child started from a large process look large.
    """
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def children_peak_rss_mb() -> float:
    """Largest peak resident memory among finished child processes, MiB (an upper bound: Linux
    counts a child's inherited peak from before its exec; call it from a small parent)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def machine() -> dict[str, Any]:
    """CPU model, cores, threads, library versions and GPU (if any) of this run."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    return info


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as an aligned table; columns are (key, header, format spec)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            line.append("-" if value is None else (format(value, spec) if spec else str(value)))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_results(name: str, payload: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Write ``payload`` (+ the machine) as JSON to ``path`` or benchmarks/results/NAME.json."""
    target = Path(path) if path else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    target.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"figures written to {target}")
    return target


def canvas_position(viewer, layer, row: float, col: float):
    """The canvas pixel (a QPoint) where ``layer``'s data pixel (row, col) is displayed in a shown viewer's
    2-D view: what a real mouse click on that pixel aims at (benchmarks.prompt_clicks, the click tests)."""
    import numpy as np
    from qtpy.QtCore import QPoint

    native = viewer.window._qt_viewer.canvas.native
    world = np.asarray(layer.data_to_world([row, col] if layer.ndim == 2 else [0, row, col]))[-2:]
    camera = viewer.scene.camera
    y, x = (world - np.asarray(camera.center)[-2:]) * camera.zoom + np.array([native.height(), native.width()]) / 2
    return QPoint(int(round(x)), int(round(y)))
