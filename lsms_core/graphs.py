"""ONNX graphs on disk and the ONNX Runtime sessions that run them. No PyTorch: ``lsms_core.compiled`` (which
exports the graphs) and ``lsms_core.quick`` (which runs a whole segmentation without PyTorch) share these."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def runtime_available() -> bool:
    """Whether ONNX Runtime is installed."""
    return importlib.util.find_spec("onnxruntime") is not None


def compiled_off() -> bool:
    """Whether the environment turns compiled graphs off (``LSMS_COMPILED=off`` or 0): PyTorch eager only."""
    return os.environ.get("LSMS_COMPILED", "").lower() in ("off", "0")


def cache_dir() -> Path:
    """Where compiled graphs are cached: ``$LSMS_CACHE_DIR/compiled``, else ``~/.cache/lsms-napari/compiled``."""
    root = os.environ.get("LSMS_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "lsms-napari") / "compiled"


def ort_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session of the graph at ``path`` with ``threads`` threads (None: ONNX Runtime's
    default, one per physical core).

    ONNX Runtime's threads busy-wait a moment after each run (its default, kept): that costs the PyTorch work
    that follows a few milliseconds (the selector: 2.3 -> 6.3 ms) but without it a new slice took 78 ms, not 64
    (benchmarks/compiled.py)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
