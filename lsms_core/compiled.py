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
from pathlib import Path

import numpy as np
import torch

from .model.lsms import LSMSOutput

FORMAT = 1  # bump when the graph's inputs or outputs change
RUNTIME = ("onnxruntime",)
EXPORTER = ("onnx", "onnxscript")


def available(build: bool = False) -> bool:
    """Whether ONNX Runtime is installed (``build``: and the exporter's packages too)."""
    return all(importlib.util.find_spec(name) is not None for name in RUNTIME + (EXPORTER if build else ()))


def cache_dir() -> Path:
    root = os.environ.get("LSMS_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "lsms-napari") / "compiled"


def artefact_path(weights_sha256: str, image_size: int, part: str = "") -> Path:
    """Where the graph of these weights (their sha256) at this input size is cached; ``part`` names a part of
    the model exported alone (e.g. "image-encoder" of the prompt model), "" for the whole LSMS."""
    version = torch.__version__.split("+")[0]
    name = f"{weights_sha256[:16]}{'-' + part if part else ''}-{image_size}-torch{version}-v{FORMAT}.onnx"
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
    import warnings

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
    """An ONNX Runtime CPU session of the graph at ``path``, with as many threads as PyTorch uses.

    ONNX Runtime's threads busy-wait a moment after each run (its default, kept): that costs the PyTorch work
    that follows a few milliseconds (the selector: 2.3 -> 6.3 ms) but without it a new slice took 78 ms, not 64
    (benchmarks/compiled.py)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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


def load_compiled(model, checkpoint_sha256: str, image_size: int, build: bool = False) -> CompiledLSMS | None:
    """The compiled forward of ``model`` from the cache; with ``build``, exported first when it is not
    there. None when ONNX Runtime (or, to build, the exporter) is not installed, when the model reads no text,
    or when there is nothing cached and ``build`` is False."""
    if not model.uses_text or not available(build):
        return None
    path = artefact_path(checkpoint_sha256, image_size)
    if not path.exists():
        if not build:
            return None
        export_onnx(model, image_size, path)
    return CompiledLSMS(model, path)


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


def load_compiled_encoder(encoder: torch.nn.Module, weights_sha256: str, image_size: int, part: str,
                          build: bool = False) -> CompiledEncoder | None:
    """``encoder``'s graph from the cache (``build``: exported from a copy first when absent); None when ONNX
    Runtime (or, to build, the exporter) is missing or nothing is cached and ``build`` is False."""
    if not available(build):
        return None
    path = artefact_path(weights_sha256, image_size, part)
    if not path.exists():
        if not build:
            return None
        export_module(model_copy(encoder), (torch.randn(1, 3, image_size, image_size),), path, ["image"],
                      ["embedding"])
    return CompiledEncoder(path)
