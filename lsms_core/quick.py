"""Segmentation without PyTorch: a checkpoint's cached ONNX graphs (LSMS, its text encoder, its lesion
selector) run by ONNX Runtime, with NumPy around them. ``lsms-segment`` uses it on the CPU when the graphs are
cached, so a cold run does not pay for importing PyTorch (1.1-2.5 s on this project's 2-core machine,
docs/benchmarks.md "Start-up").

The same function as ``Segmenter``: the same windowing (``windows.to_unit_grey``), resizes with PyTorch's
weights (``lsms_core.resize``), the same candidate descriptors and answer (``lsms_core.candidates``); tests
hold masks to >= 99.9 % equal pixels and probabilities to 1e-3 (tests/test_quick.py).

The graphs are built with PyTorch, once per checkpoint and text encoder (``quick_build.write_quick_start``:
``lsms-segment --compiled build``, or the widget in the background when it loads a model), and described by a
manifest ``<checkpoint sha256[:16]>-text-<key>-quick-v<FORMAT>.json`` in the compiled-graph cache
(``graphs.cache_dir``); ``<key>`` names the text encoder's weight file by path, size and modification time, so
another or a changed encoder folder is never run with a stale graph.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .candidates import ALL_LESIONS_TEXT, Candidates, candidate_descriptors, chosen_answer, components
from .checkpoint import CheckpointError, checkpoint_identity, read_stored_config, resolve_checkpoint
from .config import LSMSConfig, PreprocessConfig
from .expressions import clean_expression
from .files import file_sha256
from .graphs import cache_dir, ort_session, runtime_available
from .pixels import Slice, pixels_and_units
from .resize import resize_bilinear
from .result import SegmentationResult
from .text_folder import SAFE_WEIGHTS, TextEncoderNotFound, resolve_text_encoder_path
from .tokenizer import BertTokenizer
from .windows import to_unit_grey

FORMAT = 1  # bump when the manifest or the graphs it names change


def text_key(directory: Path) -> str:
    """12 hex digits naming a text encoder's weight file by its resolved path, size and modification time."""
    weights = (directory / SAFE_WEIGHTS).resolve()
    stat = weights.stat()
    return hashlib.sha256(f"{weights}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def manifest_path(checkpoint_sha256: str, text_directory: Path) -> Path:
    """Where the manifest of this checkpoint's graphs with this text encoder folder is cached."""
    return cache_dir() / f"{checkpoint_sha256[:16]}-text-{text_key(text_directory)}-quick-v{FORMAT}.json"


def text_directory_of(config: LSMSConfig, override: str | os.PathLike | None = None) -> Path:
    """The text encoder folder a checkpoint's config names (``override`` where given), checked."""
    return resolve_text_encoder_path(override if override is not None else config.text.path)


def cuda_may_be_present() -> bool:
    """Whether this machine may have a CUDA GPU, judged without PyTorch: an NVIDIA device node on Linux, the
    CUDA driver library on Windows; never on macOS. ``CUDA_VISIBLE_DEVICES`` set empty or to -1 hides them."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if os.name == "nt":
        return (Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / "nvcuda.dll").exists()
    return any(Path("/dev").glob("nvidia[0-9]*"))


def model_input_array(grey: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Windowed grey (H,W) in [0,1] -> model input (1,3,S,S) float32: ``preprocessing.to_model_input``'s resize
    (bilinear, antialiased when shrinking) and normalisation, in NumPy."""
    size = config.image_size
    resized = resize_bilinear(grey, (size, size), antialias=True)
    mean = np.asarray(config.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(3, 1, 1)
    return ((resized[None] - mean) / std)[None].astype(np.float32)


def probability_at(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Logits (S,S) -> probability (H,W) float32: resized bilinearly, then the sigmoid (``to_output_mask``)."""
    grid = resize_bilinear(logits, shape)
    with np.errstate(over="ignore"):  # exp of a large logit: the probability is 0 or 1 either way
        return (1.0 / (1.0 + np.exp(-grid))).astype(np.float32)


class QuickSegmenter:
    """``Segmenter``'s ``segment`` and ``describe`` for one checkpoint, on the CPU, from its cached graphs.

    Open with ``QuickSegmenter.open``; None there means "use ``Segmenter``" (graphs not built for this checkpoint
    and text encoder, ONNX Runtime missing).
    """

    def __init__(self, manifest: dict[str, Any], config: LSMSConfig, identity: dict[str, str],
                 text_directory: Path) -> None:
        graphs = manifest["graphs"]
        folder = cache_dir()
        self.config = config
        self.identity = identity
        self.tokenizer = BertTokenizer(text_directory)
        self.lsms = ort_session(folder / graphs["lsms"])
        self.text = ort_session(folder / graphs["text"])
        self.selector = ort_session(folder / graphs["selector"]) if graphs.get("selector") else None
        self._words: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def open(cls, checkpoint: str | os.PathLike = "default",
             text_encoder_path: str | os.PathLike | None = None) -> QuickSegmenter | None:
        """The quick segmenter of ``checkpoint`` ("default" or a path), or None when its graphs are not cached
        with this text encoder folder (or one of them is missing, or ONNX Runtime is not installed), and when the
        checkpoint or the text encoder folder is unusable: ``Segmenter`` then says what is wrong with them."""
        if not runtime_available():
            return None
        try:
            path = resolve_checkpoint(checkpoint)
            config, extra = read_stored_config(path)
            text_directory = text_directory_of(config, text_encoder_path) if config.model.use_text else None
            sha256 = file_sha256(path)
        except (CheckpointError, TextEncoderNotFound, OSError):
            return None
        if text_directory is None:  # a text-free model: its graph is not built for the quick start
            return None
        manifest_file = manifest_path(sha256, text_directory)
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        names = [name for name in manifest.get("graphs", {}).values() if name]
        if manifest.get("format") != FORMAT or manifest.get("checkpoint_sha256") != sha256 or not all(
                (cache_dir() / name).is_file() for name in names):
            return None
        if config.text.sha256 and manifest.get("text_sha256") != config.text.sha256:  # as Segmenter says it
            warnings.warn(f"the text encoder at {text_directory} is not the one {path.name} was trained with "
                          f"({config.text.name}, sha256 {config.text.sha256[:12]}...); masks may be wrong", stacklevel=2)
        try:
            return cls(manifest, config, checkpoint_identity(path, config, extra, sha256), text_directory)
        except Exception as error:  # noqa: BLE001 - a damaged cached graph: PyTorch still works; build again later
            from .pixels import one_line

            warnings.warn(f"the cached graphs of {path.name} do not load; running PyTorch ({one_line(error)})",
                          stacklevel=2)
            manifest_file.unlink(missing_ok=True)
            return None

    # --- the steps ----------------------------------------------------------------------------
    def encode_text(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Word features (1,T,C_l) float32 and mask (1,T) float32 of one expression (cached per text)."""
        if text not in self._words:
            ids, mask = self.tokenizer([text], self.config.text.max_tokens)
            words = self.text.run(None, {"ids": ids, "mask": mask})[0]
            self._words[text] = (words.astype(np.float32), mask.astype(np.float32))
        return self._words[text]

    def _lsms(self, image: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray]:
        """LSMS on (1,3,S,S) with ``text``: logits (S,S) and the decoder embedding (D,h,w)."""
        words, mask = self.encode_text(text)
        logits, embedding = self.lsms.run(None, {"image": image, "words": words, "word_mask": mask})
        return logits[0, 0], embedding[0]

    def segment(self, image: np.ndarray | Slice, text: str, hounsfield: bool | None = None,
                threshold: float = 0.5) -> SegmentationResult:
        """As ``Segmenter.segment``: mask (H,W) bool and probability (H,W) float32 of the lesion ``text`` names."""
        start = time.perf_counter()
        pixels, hounsfield = pixels_and_units(image, hounsfield)
        text = clean_expression(text)
        grey = to_unit_grey(pixels, self.config.preprocess, hounsfield)
        model_input = model_input_array(grey, self.config.preprocess)
        notes: list[str] = []
        matches = None
        if self.selector is None:
            logits, _ = self._lsms(model_input, text)
            probability = probability_at(logits, grey.shape)
            mask = probability > threshold
        else:
            logits, embedding = self._lsms(model_input, ALL_LESIONS_TEXT)
            found_probability = probability_at(logits, grey.shape)
            labels = components(found_probability > threshold)
            found = Candidates(labels, found_probability, candidate_descriptors(
                labels, grey, embedding, self.config.model.selector_clusters))
            scores = np.zeros(0, dtype=np.float32)
            if found.count:
                words, word_mask = self.encode_text(text)
                scores = self.selector.run(None, {"features": found.features[None],
                                                  "valid": np.ones((1, found.count), dtype=bool),
                                                  "words": words, "word_mask": word_mask})[0][0]
            mask, probability, matches = chosen_answer(found, scores, self.config.model.selector_fallback, notes)
        return SegmentationResult(mask, probability, text, time.perf_counter() - start, "cpu", self.identity, notes,
                                  matches)

    def describe(self) -> dict[str, Any]:
        """As ``Segmenter.describe``; ``pytorch`` is False."""
        return {**self.identity, "device": "cpu", "runtime": "onnxruntime", "pytorch": False,
                "image_size": self.config.preprocess.image_size, "uses_text": True,
                "text_encoder": self.config.text.name}
