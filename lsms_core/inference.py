"""Warm inference: load a checkpoint once, then ``segment(image, text)`` many times.

Word features are cached per expression; the model runs on CUDA when present (bf16/fp16
autocast) and on CPU in fp32; a CUDA out-of-memory error frees memory and retries on the CPU
with a warning. Used by the CLI, the evaluation and the napari widget alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from .allocator import reuse_freed_memory
from .checkpoint import Checkpoint, load_model
from .device import autocast, resolve_device
from .expressions import MAX_EXPRESSION_CHARS, ExpressionError, clean_expression  # noqa: F401 - re-exported
from .image_io import Slice
from .pixels import pixels_and_units
from .preprocessing import to_model_input, to_output_mask, to_unit_grey
from .result import SegmentationResult  # noqa: F401 - re-exported
from .selection import ALL_LESIONS_TEXT, Candidates, Matches, chosen_answer, lesion_candidates


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError, or a RuntimeError saying "out of memory" (older PyTorch, cuDNN, cuBLAS)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


class Segmenter:
    """A loaded LSMS model with its text encoder, kept warm between calls.

    checkpoint: a path to a ``.safetensors`` checkpoint, or ``"default"``.
    device: ``auto`` (CUDA if present), ``cpu`` or ``cuda[:N]``.
    text_encoder_path: where to find the text encoder when the checkpoint's own path does
    not exist on this machine (the hash stored in the checkpoint is checked either way).
    """

    def __init__(self, checkpoint: str | os.PathLike = "default", device: str | torch.device = "auto",
                 text_encoder_path: str | os.PathLike | None = None, cache_size: int = 256,
                 compiled: str = "auto") -> None:
        """compiled: on the CPU, run LSMS through ONNX Runtime (lsms_core.compiled) when this checkpoint's graph
        is cached ("auto", the default), after building it now if it is not ("build"), or never ("off"; "auto"
        too when the environment says ``LSMS_COMPILED=off``). Eager PyTorch otherwise, and always on CUDA.
        ``compile_in_background`` builds the graph without making the caller wait."""
        self._device = resolve_device(device)
        if self._device.type == "cpu":
            reuse_freed_memory()  # ~1/3 faster CPU passes (lsms_core/allocator.py)
        self.model, self.checkpoint = load_model(checkpoint, "cpu")
        self.text_encoder = self._load_text_encoder(self.checkpoint, text_encoder_path)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        self.text_encodings = 0  # how many expressions were really encoded (cache misses)
        self._candidates: tuple[tuple, Candidates] | None = None
        self._compiled = self._compiled_part(compiled)
        self._move(self._device)

    # --- set-up ---------------------------------------------------------------------------
    @staticmethod
    def _load_text_encoder(checkpoint: Checkpoint, override: str | os.PathLike | None):
        config = checkpoint.config
        if not config.model.use_text:
            return None
        from .text_encoder import TextEncoder

        text_config = config.text
        if override is not None:
            text_config = dataclasses.replace(text_config, path=str(override))
        encoder = TextEncoder(text_config)
        if encoder.hidden_size != config.model.text_dim:
            raise ValueError(f"the text encoder at {encoder.directory} has hidden size {encoder.hidden_size}, "
                             f"but {checkpoint.path.name} was trained with {config.model.text_dim}: pass the "
                             f"encoder it was trained with ({config.text.name})")
        if config.text.sha256 and encoder.sha256 != config.text.sha256:
            warnings.warn(f"the text encoder at {encoder.directory} is not the one {checkpoint.path.name} was "
                          f"trained with ({config.text.name}, sha256 {config.text.sha256[:12]}...); masks may be wrong",
                          stacklevel=3)
        if checkpoint.text_state:
            missing = set(checkpoint.text_state) - set(dict(encoder.named_parameters()))
            if missing:
                raise ValueError(f"{checkpoint.path.name} holds fine-tuned text weights the encoder lacks: "
                                 f"{sorted(missing)[:3]}")
            encoder.load_state_dict(checkpoint.text_state, strict=False)
        return encoder.eval()

    def _move(self, device: torch.device) -> None:
        # channels_last: oneDNN's depthwise strip convolutions are several times faster in
        # NHWC than in NCHW on the CPU (docs/benchmarks.md); cuDNN prefers it as well.
        self.model.to(device, memory_format=torch.channels_last)
        if self.text_encoder is not None:
            self.text_encoder.to(device)
        self._device = device
        self._cache.clear()
        self._candidates = None
        self._compiled.runner = None
        if device.type == "cpu" and self._compiled.mode != "off":
            self._compiled.use(build=self._compiled.mode == "build")

    def _compiled_part(self, mode: str):
        """The compiled graph of this checkpoint's LSMS at its input size (lsms_core.compiled)."""
        from . import compiled

        size = self.checkpoint.config.preprocess.image_size
        return compiled.CompiledPart(
            mode if self.uses_text else "off", compiled.artefact_path(self.checkpoint.sha256, size),
            copy=lambda: compiled.model_copy(self.model), export=lambda module, path: compiled.export_onnx(
                module, size, path), load=lambda path: compiled.CompiledLSMS(self.model, path), what="LSMS")

    def compile_in_background(self) -> threading.Thread | None:
        """Build this checkpoint's graphs in a daemon thread (from copies of the model taken now: calls keep
        running eager meanwhile): LSMS's, used here once built, then those of the PyTorch-free path
        (``lsms_core.quick``: ``lsms-segment``'s quick start). The thread, or None when there is nothing to do
        (all built, not on the CPU, ``compiled="off"``, the exporter's packages missing). 20-40 s once per
        checkpoint on this project's 2-core CPU."""
        if self._device.type != "cpu":
            return None
        lsms = self._compiled.in_background()
        if not self._quick_start_missing():
            return lsms
        from .quick_build import quick_start_parts, write_quick_start

        parts = quick_start_parts(self)

        def build() -> None:
            if lsms is not None:
                lsms.join()
            try:
                write_quick_start(self, parts)
            except Exception as error:  # noqa: BLE001 - lsms-segment stays on PyTorch; say why once
                warnings.warn(f"building the PyTorch-free graphs failed; lsms-segment will load PyTorch ({error})",
                              stacklevel=2)

        thread = threading.Thread(target=build, name="lsms-compile-quick", daemon=True)
        thread.start()
        return thread

    def _quick_start_missing(self) -> bool:
        """Whether the PyTorch-free path could be built for this model and is not built yet."""
        from . import compiled, quick

        if (self._compiled.mode == "off" or not self.uses_text or not self.text_encoder.native
                or not compiled.available(build=True)):
            return False
        return not quick.manifest_path(self.checkpoint.sha256, self.text_encoder.directory).exists()

    @property
    def runtime(self) -> str:
        """What runs LSMS's forward: "onnxruntime" or "pytorch"."""
        return "onnxruntime" if self._lsms is not self.model else "pytorch"

    @property
    def _lsms(self):
        """LSMS's forward as called here: the compiled graph when in use (on the CPU), else the eager model."""
        runner = self._compiled.runner  # read once: a background build may put it in place meanwhile
        return runner if runner is not None and self._device.type == "cpu" else self.model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def identity(self) -> dict[str, str]:
        return self.checkpoint.identity

    @property
    def uses_text(self) -> bool:
        return self.text_encoder is not None

    # --- text -----------------------------------------------------------------------------
    def encode_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Word features (1,T,C_l) and mask (1,T) of one expression, cached per exact text."""
        text = clean_expression(text)
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        with torch.inference_mode():
            encoded = self.text_encoder.encode([text], self._device)
        self.text_encodings += 1
        self._cache[text] = encoded
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return encoded

    # --- segmentation ---------------------------------------------------------------------
    def segment(self, image: np.ndarray | Slice, text: str, hounsfield: bool | None = None,
                threshold: float = 0.5) -> SegmentationResult:
        """Mask and probability (H,W) of the lesion ``text`` refers to on one slice.

        image: a Slice, or a (H,W) array in HU (CT) or raw units; ``hounsfield`` says which
        (required for arrays, taken from the Slice otherwise).
        """
        start = time.perf_counter()
        pixels, hounsfield = pixels_and_units(image, hounsfield)
        text = clean_expression(text) if self.uses_text else " ".join(str(text).split())
        model_input = to_model_input(pixels, self.checkpoint.config.preprocess, hounsfield)
        notes: list[str] = []
        run = self._run if self.model.selector is None else (
            lambda model_input, text: self._select(model_input, text, pixels, hounsfield, threshold, notes))
        try:
            output = run(model_input, text)
        except RuntimeError as error:
            if self._device.type == "cpu" or not is_out_of_memory(error):
                raise
            notes.append(f"{self._device} ran out of memory; this and later calls run on the CPU")
            warnings.warn(notes[-1], stacklevel=2)
            self._move(torch.device("cpu"))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            output = run(model_input, text)
        matches = None
        if isinstance(output, tuple):
            mask, probability, matches = output
        else:
            mask, probability = to_output_mask(output, pixels.shape[-2:], threshold)
        return SegmentationResult(mask, probability, text, time.perf_counter() - start, str(self._device),
                                  self.identity, notes, matches)

    def _run(self, model_input: torch.Tensor, text: str) -> torch.Tensor:
        """(3,S,S) input -> (1,S,S) logits on the CPU."""
        words = mask = None
        if self.uses_text:
            words, mask = self.encode_text(text)
        with torch.inference_mode(), autocast(self._device):
            image = model_input[None].to(self._device).contiguous(memory_format=torch.channels_last)
            logits = self._lsms(image, words, mask)
        return logits[0].float().cpu()

    def candidates(self, model_input: torch.Tensor, pixels: np.ndarray, hounsfield: bool,
                   threshold: float = 0.5) -> Candidates:
        """The lesion candidates of one slice (LSMS with "all lesions"), cached for the last slice."""
        key = (hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest(), pixels.shape, hounsfield, threshold,
               str(self._device))
        if self._candidates is not None and self._candidates[0] == key:
            return self._candidates[1]
        words, mask = self.encode_text(ALL_LESIONS_TEXT)
        grey = to_unit_grey(pixels, self.checkpoint.config.preprocess, hounsfield)
        with torch.inference_mode(), autocast(self._device):
            image = model_input[None].to(self._device).contiguous(memory_format=torch.channels_last)
            found = lesion_candidates(self._lsms, image, words, mask, pixels.shape[-2:], grey, threshold)
        self._candidates = (key, found)
        return found

    def _select(self, model_input: torch.Tensor, text: str, pixels: np.ndarray, hounsfield: bool,
                threshold: float, notes: list[str]) -> tuple[np.ndarray, np.ndarray, Matches]:
        """Mask and probability (H,W) of the candidates the selector accepts for ``text``, and the
        candidates as the words rank them."""
        found = self.candidates(model_input, pixels, hounsfield, threshold)
        logits = np.zeros(0, dtype=np.float32)
        if found.count:
            words, mask = self.encode_text(text)
            with torch.inference_mode():
                logits = self.model.selector(found.features[None].to(self._device),
                                             torch.ones(1, found.count, dtype=torch.bool, device=self._device),
                                             words.float(), mask)[0].float().cpu().numpy()
        return chosen_answer(found, logits, self.checkpoint.config.model.selector_fallback, notes)

    def describe(self) -> dict[str, Any]:
        """Identity, preset, device and preprocessing: what ``--json`` outputs report."""
        config = self.checkpoint.config
        return {**self.identity, "device": str(self._device), "runtime": self.runtime, "pytorch": True,
                "image_size": config.preprocess.image_size,
                "uses_text": self.uses_text, "text_encoder": config.text.name if self.uses_text else None}
