"""LSMS's forward pass through ONNX Runtime on the CPU: the same function as eager PyTorch, faster here
(docs/benchmarks.md, "Compiled inference"), with eager PyTorch as the fallback.

The artefact is an ONNX graph of one checkpoint at one input size, exported by ``torch.onnx.export`` (the
torch.export-based exporter: no C++ compiler involved), cached as
``<cache>/<checkpoint sha256[:16]>-<size>-torch<version>-v<FORMAT>.onnx`` and built again when any of those
change. ``<cache>`` is ``$LSMS_CACHE_DIR/compiled`` or ``~/.cache/lsms-napari/compiled``. ``onnxruntime``
runs it, ``onnx`` and ``onnxscript`` build it (all three are dependencies); where one is missing,
``available()`` is False and ``Segmenter`` stays eager.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from . import graphs
from .graphs import cache_dir  # noqa: F401 - re-exported
from .model.lsms import LSMSOutput

FORMAT = 1  # bump when the graph's inputs or outputs change
EXPORTER = ("onnx", "onnxscript")


def available(build: bool = False) -> bool:
    """Whether ONNX Runtime is installed (``build``: and the exporter's packages too)."""
    return graphs.runtime_available() and (not build or all(importlib.util.find_spec(name) for name in EXPORTER))


def artefact_path(weights_sha256: str, image_size: int | None, part: str = "") -> Path:
    """Where the graph of these weights (their sha256) at this input size is cached; ``part`` names a part of
    the model exported alone (e.g. "image-encoder" of the prompt model, "selector"), "" for the whole LSMS;
    ``image_size`` None for a part that reads no image."""
    version = torch.__version__.split("+")[0]
    size = "" if image_size is None else f"-{image_size}"
    name = f"{weights_sha256[:16]}{'-' + part if part else ''}{size}-torch{version}-v{FORMAT}.onnx"
    return cache_dir() / name


class _Graph(torch.nn.Module):
    """What is exported: image (1,3,S,S), words (1,T,C_l), word mask (1,T) -> logits (1,1,S,S), decoder
    embedding (1,D,S/4,S/4): what ``Segmenter`` reads from LSMS (the selector's candidates need the embedding)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor):
        output = self.model(image, words, word_mask, features=True)
        return output.logits, output.embedding


def model_copy(model):
    """A float32 CPU copy of ``model`` in eval mode: what is exported (the original may keep serving)."""
    copied = copy.deepcopy(model).float().cpu().eval()
    copied._export_copy = True
    return copied


def export_module(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  output_names: list[str], dynamic_shapes: dict | None = None) -> Path:
    """Export ``module`` (eval mode, CPU, float32) called on ``example`` to an ONNX file at ``path``, written
    atomically (a temporary file renamed into place). The module is run once first, so that state it draws on
    first use (the NMF's eval bases) is a constant of the graph."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." for every torchvision operator
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            module(*example)
            torch.onnx.export(module, example, temporary, input_names=input_names, output_names=output_names,
                              dynamo=True, verbose=False, dynamic_shapes=dynamic_shapes, external_data=False)
        os.replace(temporary, path)
    finally:
        quiet.setLevel(level)
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def export_onnx(model, image_size: int, path: Path) -> Path:
    """Export ``model`` (an LSMS that reads text) at ``image_size`` to ``path``, from a copy unless it is one
    already (``model_copy``). About 10-15 s on this project's 2-core CPU."""
    graph = _Graph(model if getattr(model, "_export_copy", False) else model_copy(model))
    example = (torch.randn(1, 3, image_size, image_size), torch.randn(1, 8, model.config.text_dim), torch.ones(1, 8))
    tokens = torch.export.Dim("tokens", min=1, max=512)
    return export_module(graph, example, path, ["image", "words", "word_mask"], ["logits", "embedding"],
                         {"image": None, "words": {1: tokens}, "word_mask": {1: tokens}})


def ort_session(path: Path, threads: int | None = None):
    """``graphs.ort_session`` with as many threads as PyTorch uses (unless ``threads`` says)."""
    return graphs.ort_session(path, threads or torch.get_num_threads())


class CompiledLSMS:
    """An LSMS forward through an ONNX Runtime session; called like the model:
    ``(image (1,3,S,S), words (1,T,C_l), word_mask (1,T), features=False)`` -> logits (1,1,S,S), or an
    LSMSOutput (logits, embedding, no sentence feature) with ``features``. CPU tensors in and out; ``config``
    and ``selector`` are the eager model's."""

    def __init__(self, model, path: Path, threads: int | None = None) -> None:
        self.session = ort_session(path, threads)
        self.path = path
        self.config = model.config
        self.selector = model.selector
        self.image_size = int(self.session.get_inputs()[0].shape[-1])

    def __call__(self, image: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                 features: bool = False) -> torch.Tensor | LSMSOutput:
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size) or image.shape[0] != 1:
            raise ValueError(f"this compiled graph takes one {self.image_size}x{self.image_size} image, got "
                             f"{tuple(image.shape)}")
        feed = {"image": np.ascontiguousarray(image.float().cpu().numpy()),
                "words": np.ascontiguousarray(words.float().cpu().numpy()),
                "word_mask": np.ascontiguousarray(word_mask.float().cpu().numpy())}
        logits, embedding = self.session.run(None, feed)
        logits = torch.from_numpy(logits)
        return LSMSOutput(logits, torch.from_numpy(embedding), None) if features else logits


class CompiledEncoder:
    """An image encoder (one (1,3,S,S) image -> one feature map) through ONNX Runtime: the prompt model's
    TinyViT (lsms_core.prompt). CPU tensors in and out."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.session = ort_session(path, threads)
        self.path = path
        self.image_size = int(self.session.get_inputs()[0].shape[-1])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape) != (1, 3, self.image_size, self.image_size):
            raise ValueError(f"this compiled encoder takes one 3x{self.image_size}x{self.image_size} image, got "
                             f"{tuple(image.shape)}")
        return torch.from_numpy(self.session.run(None, {"image": np.ascontiguousarray(image.float().cpu().numpy())})[0])


MODES = ("auto", "build", "off")


def resolve_mode(mode: str) -> str:
    """``mode`` checked ("auto": use a cached graph; "build": build it when absent; "off": never); "auto" is
    "off" when the environment says ``LSMS_COMPILED=off`` (or 0)."""
    if mode not in MODES:
        raise ValueError(f"compiled must be one of {', '.join(MODES)}, got {mode!r}")
    return "off" if mode == "auto" and graphs.compiled_off() else mode


class CompiledPart:
    """The compiled graph of one part of a model (LSMS, the prompt model's image encoder) and how it is kept:
    ``runner`` is the graph's callable while in use, else None (eager). ``copy()`` returns the module to export
    (taken when a build starts, so the original keeps serving), ``export(module, path)`` writes the graph,
    ``load(path)`` opens it; ``what`` names it in warnings."""

    def __init__(self, mode: str, path: Path, copy, export, load, what: str) -> None:
        self.mode = resolve_mode(mode)
        self.path = path
        self._copy, self._export, self._load, self.what = copy, export, load, what
        self.runner = None

    def use(self, build: bool = False) -> bool:
        """Open the cached graph (``build``: exported first when absent); True when in use. A graph that does not
        load, or a build that fails, leaves eager in use with a warning, and a bad cached file is removed."""
        self.runner = None
        if self.mode == "off" or not available(build):
            return False
        try:
            if not self.path.exists():
                if not build:
                    return False
                self._export(self._copy(), self.path)
            self.runner = self._load(self.path)
        except Exception as error:  # noqa: BLE001 - a damaged cache or an exporter failure: eager still works
            from .pixels import one_line

            warnings.warn(f"compiled {self.what} unavailable, running eager PyTorch ({one_line(error)})",
                          stacklevel=3)
            self.path.unlink(missing_ok=True)
        return self.runner is not None

    def in_background(self) -> threading.Thread | None:
        """Build (when absent) and open the graph in a daemon thread, then put it in use; the thread, or None
        when there is nothing to do (in use already, "off", the exporter's packages missing)."""
        if self.runner is not None or self.mode == "off" or not available(build=True):
            return None
        module = self._copy()

        def build() -> None:
            try:
                if not self.path.exists():
                    self._export(module, self.path)
                self.runner = self._load(self.path)
            except Exception as error:  # noqa: BLE001 - eager keeps working; say why once
                warnings.warn(f"compiling {self.what} failed, staying with eager PyTorch ({error})", stacklevel=2)

        thread = threading.Thread(target=build, name="lsms-compile", daemon=True)
        thread.start()
        return thread
