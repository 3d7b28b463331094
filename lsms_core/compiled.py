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


def artefact_path(checkpoint_sha256: str, image_size: int) -> Path:
    """Where the graph of this checkpoint (its weights' sha256) at this input size is cached."""
    version = torch.__version__.split("+")[0]
    return cache_dir() / f"{checkpoint_sha256[:16]}-{image_size}-torch{version}-v{FORMAT}.onnx"


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


def export_onnx(model, image_size: int, path: Path) -> Path:
    """Export ``model`` (an LSMS that reads text) at ``image_size`` to ``path`` (written atomically), from a
    copy unless it is one already (``model_copy``). About 10-15 s on this project's 2-core CPU."""
    import logging
    import warnings

    graph = _Graph(model if getattr(model, "_export_copy", False) else model_copy(model))
    text_dim = model.config.text_dim
    example = (torch.randn(1, 3, image_size, image_size), torch.randn(1, 8, text_dim), torch.ones(1, 8))
    tokens = torch.export.Dim("tokens", min=1, max=512)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." for every torchvision operator
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            graph(*example)  # draws the NMF's eval bases once: the graph then holds them as a constant
            torch.onnx.export(graph, example, temporary, input_names=["image", "words", "word_mask"],
                              output_names=["logits", "embedding"], dynamo=True, verbose=False,
                              dynamic_shapes={"image": None, "words": {1: tokens}, "word_mask": {1: tokens}},
                              external_data=False)
        os.replace(temporary, path)
    finally:
        quiet.setLevel(level)
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


class CompiledLSMS:
    """An LSMS forward through an ONNX Runtime session; called like the model:
    ``(image (1,3,S,S), words (1,T,C_l), word_mask (1,T), features=False)`` -> logits (1,1,S,S), or an
    LSMSOutput (logits, embedding, no sentence feature) with ``features``. CPU tensors in and out; ``config``
    and ``selector`` are the eager model's."""

    def __init__(self, model, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # ONNX Runtime's threads busy-wait a moment after each run (its default, kept): that costs the selector's
        # few PyTorch milliseconds that follow (2.3 -> 6.3 ms) but without it a new slice took 78 ms, not 64
        # (benchmarks/compiled.py).
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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
