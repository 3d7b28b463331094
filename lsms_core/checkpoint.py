"""Self-describing checkpoints: one safetensors file holding the weights and, in its metadata,
the full LSMSConfig (model, text encoder identity and hash, preprocessing) as JSON.

Loading never unpickles: safetensors stores raw tensors only. A PyTorch pickle (``.pt``,
``.pth``) is refused with a message, because unpickling can run code hidden in the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_bytes
from .config import ConfigError, LSMSConfig

if TYPE_CHECKING:  # torch is imported where tensors are read or written: the header alone needs none
    import torch
    from torch import nn

FORMAT_NAME = "lsms-checkpoint"
FORMAT_VERSION = "1"
TEXT_PREFIX = "text_encoder."
DEFAULT_CHECKPOINT = Path(__file__).parent / "weights" / "lsms-reflits.safetensors"
MAX_CHECKPOINT_BYTES = 2 << 30  # checked from the file size before anything is read
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar"}


class CheckpointError(ValueError):
    """The file is not a usable LSMS checkpoint; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """A checkpoint read from disk: its config, weights and identity."""

    path: Path
    config: LSMSConfig
    model_state: dict[str, torch.Tensor]
    text_state: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @property
    def identity(self) -> dict[str, str]:
        """Name and weights hash: what provenance records say proposed a mask."""
        return checkpoint_identity(self.path, self.config, self.extra, self.sha256)


def checkpoint_identity(path: Path, config: LSMSConfig, extra: dict[str, Any], sha256: str) -> dict[str, str]:
    """{"name", "sha256", "preset"} of a checkpoint file: its stored name (else the file's stem), the sha256 of
    its bytes and its preset."""
    return {"name": str(extra.get("name", path.stem)), "sha256": sha256, "preset": config.preset}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A shipped model's name (``"default"``/``"liver"``, ``"qata"``, ``"lung-ct"``: lsms_core.models) -> its
    file in the package; otherwise the path, checked to exist. ``"auto"`` is not a file: the caller chooses a
    model for its image first (``lsms_core.models.resolve_auto``)."""
    from .models import AUTO, SHIPPED, shipped_name, shipped_path

    name = shipped_name(str(path))
    if name is not None:
        shipped = shipped_path(name)
        if not shipped.is_file():
            raise CheckpointError(
                f"the {name} model is not installed ({shipped} is missing): reinstall lsms-napari, or pass "
                "--checkpoint PATH to a model trained with lsms-train")
        return shipped
    if str(path) == AUTO:
        raise CheckpointError("'auto' chooses a model by the image: it needs an image to choose for (lsms-segment "
                              "and the widget do this); elsewhere name a model or a checkpoint file")
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise CheckpointError(f"checkpoint {resolved} does not exist: pass a .safetensors file written by "
                              f"lsms-train, or a shipped model's name ({', '.join(['default', *SHIPPED])})")
    return resolved


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: LSMSConfig,
                    text_encoder: nn.Module | None = None, extra: dict[str, Any] | None = None,
                    half: bool = False) -> Path:
    """Write ``model`` (and a fine-tuned text encoder's trainable weights) atomically.

    half: store floating-point parameters as fp16 (buffers such as BatchNorm statistics stay
    fp32); loading always returns fp32.
    """
    from safetensors.torch import save

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    parameter_names = {name for name, _ in model.named_parameters()}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and name in parameter_names and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor.contiguous()
    if text_encoder is not None and not config.text.frozen:
        for name, param in text_encoder.named_parameters():
            if param.requires_grad:
                tensors[TEXT_PREFIX + name] = param.detach().cpu().contiguous()
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config.to_json(),
                "extra": json.dumps(extra or {}, sort_keys=True, default=str)}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_bytes(path, save(tensors, metadata=metadata))
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: "[Errno 28] No space left on device"
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path


def _looks_like_pickle(path: Path, head: bytes) -> bool:
    """A PyTorch/pickle file, judged from its first bytes (and its name when they say nothing).

    A safetensors file starts with its header's length (8 bytes, little-endian) and then ``{``;
    that length may well begin with 0x80, the pickle protocol byte, so it is checked first.
    """
    if head[8:9] == b"{":
        return False
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return True  # torch's zip container, or a raw pickle of protocol 2-5
    return path.suffix.lower() in _PICKLE_SUFFIXES


def _refuse_pickle(path: Path, head: bytes) -> None:
    if _looks_like_pickle(path, head):
        raise CheckpointError(
            f"{path} is a PyTorch pickle (.pt/.pth), not an LSMS checkpoint. Pickles can run code "
            "when loaded, so lsms-napari never opens them. Use a .safetensors checkpoint written by "
            "lsms-train (to import SegNeXt ImageNet weights, use lsms_core.mscan_import)")


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint without building a model. Raises CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = resolve_checkpoint(path)
    try:
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path} is {size / 2**30:.1f} GiB; an LSMS checkpoint is tens of MB (at most "
                                  f"{MAX_CHECKPOINT_BYTES >> 30} GiB is read): is this the right file?")
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    if not data:
        raise CheckpointError(f"{path} is empty (0 bytes): the copy or the save was interrupted")
    _refuse_pickle(path, data[:16])
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or damaged?): {exc}") from exc
    metadata = _read_metadata(path, data)
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is a safetensors file but not an LSMS checkpoint (no '{FORMAT_NAME}' "
                              "metadata): was it written by lsms-train?")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {metadata.get('format_version')!r}; this "
                              f"lsms-napari reads format {FORMAT_VERSION}: upgrade lsms-napari")
    try:
        config = LSMSConfig.from_json(metadata["config"])
        extra = json.loads(metadata.get("extra", "{}"))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the stored configuration is unusable: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # damaged or hand-edited JSON
        raise CheckpointError(f"{path}: the stored configuration is unusable ({type(exc).__name__}: {exc}); "
                              "the file is damaged or was not written by lsms-train") from exc
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: the stored 'extra' metadata is not a JSON object; the file is damaged")
    import torch

    model_state = {k: v.float() if v.dtype == torch.float16 else v
                   for k, v in tensors.items() if not k.startswith(TEXT_PREFIX)}
    text_state = {k[len(TEXT_PREFIX):]: v for k, v in tensors.items() if k.startswith(TEXT_PREFIX)}
    return Checkpoint(path, config, model_state, text_state, extra, hashlib.sha256(data).hexdigest())


def read_stored_config(path: str | os.PathLike) -> tuple[LSMSConfig, dict[str, Any]]:
    """A checkpoint's configuration and ``extra`` metadata from its safetensors header alone (a few KB; no
    weights are read). CheckpointError when the file is not a checkpoint."""
    path = resolve_checkpoint(path)
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 0 < length <= min(path.stat().st_size, 100 << 20):
                raise ValueError(f"header length {length}")
            metadata = json.loads(handle.read(length)).get("__metadata__") or {}
        config = LSMSConfig.from_json(metadata["config"])
        extra = json.loads(metadata.get("extra", "{}"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: cannot read the model's configuration ({exc})") from exc
    return config, extra if isinstance(extra, dict) else {}


def _read_metadata(path: Path, data: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (the header is 8-byte length + JSON)."""
    try:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors header: {exc}") from exc
    return header.get("__metadata__", {}) or {}


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Build the model a checkpoint describes and load its weights (strict), in eval mode."""
    from .model import build_model

    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint.config.model)
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint.path}: weights do not fit the stored configuration "
                              f"(preset {checkpoint.config.preset}): {exc}") from exc
    return model.to(device).eval(), checkpoint
