"""A BERT encoder and its tokenizer without importing transformers (docs/benchmarks.md, "Start-up").

transformers' BertModel is the same arithmetic, but importing it costs ~3 s on this CPU (its modeling
module pulls in torch.distributed and torch._dynamo), more than the rest of a cold ``lsms-segment``
together. This module holds what the text encoder uses of it: the embeddings, the encoder layers
(post-LayerNorm self-attention and feed-forward, dropout where BERT has it), module names equal to
the checkpoint's keys (``encoder.layer.3.attention.self.query.weight``), and a tokenizer read from the
folder's ``tokenizer.json`` by the ``tokenizers`` library (what transformers' fast tokenizer runs
inside). ``TextEncoder`` uses it for folders it can represent exactly (``supports``) and
transformers otherwise; tests/test_text_encoder.py holds the two to the same features.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import BertTokenizer  # noqa: F401 - re-exported

_ACTIVATIONS = {"gelu": lambda x: F.gelu(x), "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


@dataclass(frozen=True)
class BertShape:
    """The numbers of a BERT ``config.json`` this module needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float

    @classmethod
    def of(cls, config: dict) -> "BertShape":
        return cls(int(config["vocab_size"]), int(config["hidden_size"]), int(config["num_hidden_layers"]),
                   int(config["num_attention_heads"]), int(config["intermediate_size"]),
                   str(config.get("hidden_act", "gelu")), int(config.get("max_position_embeddings", 512)),
                   int(config.get("type_vocab_size", 2)), float(config.get("layer_norm_eps", 1e-12)),
                   int(config.get("pad_token_id", 0) or 0), float(config.get("hidden_dropout_prob", 0.1)),
                   float(config.get("attention_probs_dropout_prob", 0.1)))


def supports(directory: Path) -> bool:
    """True when the folder is a plain BERT this module reproduces exactly: ``model_type`` bert, absolute
    positions, a known activation, and a ``tokenizer.json``."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("model_type") == "bert"
            and config.get("position_embedding_type", "absolute") == "absolute"
            and config.get("hidden_act", "gelu") in _ACTIVATIONS and not config.get("is_decoder", False)
            and (directory / "tokenizer.json").is_file())


class _Embeddings(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(shape.vocab_size, shape.hidden_size, padding_idx=shape.pad_token_id)
        self.position_embeddings = nn.Embedding(shape.max_position_embeddings, shape.hidden_size)
        self.token_type_embeddings = nn.Embedding(shape.type_vocab_size, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)  # noqa: N815 (checkpoint name)
        self.dropout = nn.Dropout(shape.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        summed = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
                  + self.token_type_embeddings.weight[0])  # one segment: token type 0 everywhere
        return self.dropout(self.LayerNorm(summed))


class _SelfAttention(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.heads = shape.num_attention_heads
        self.query = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.key = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.value = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.dropout_p = shape.attention_probs_dropout_prob

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = hidden.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(hidden)), heads(self.key(hidden)),
                                             heads(self.value(hidden)), attn_mask=bias,
                                             dropout_p=self.dropout_p if self.training else 0.0,
                                             scale=1.0 / math.sqrt(width // self.heads))
        return out.transpose(1, 2).reshape(batch, tokens, width)


class _DenseNorm(nn.Module):
    """``dense`` -> dropout -> residual -> ``LayerNorm`` (BERT's SelfOutput and Output)."""

    def __init__(self, inner: int, shape: BertShape) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)  # noqa: N815
        self.dropout = nn.Dropout(shape.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.self = _SelfAttention(shape)
        self.output = _DenseNorm(shape.hidden_size, shape)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, bias), hidden)


class _Intermediate(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.dense = nn.Linear(shape.hidden_size, shape.intermediate_size)
        self.activation = _ACTIVATIONS[shape.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.attention = _Attention(shape)
        self.intermediate = _Intermediate(shape)
        self.output = _DenseNorm(shape.intermediate_size, shape)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, bias)
        return self.output(self.intermediate(attended), attended)


class _Encoder(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(shape) for _ in range(shape.num_hidden_layers))


class BertEncoder(nn.Module):
    """BERT without its pooler: (B,T) ids and mask -> ``.last_hidden_state`` (B,T,C). ``config`` has
    ``hidden_size`` like transformers' models."""

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=shape.hidden_size, model_type="bert")
        self.embeddings = _Embeddings(shape)
        self.encoder = _Encoder(shape)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        hidden = self.embeddings(input_ids)
        # additive mask (B,1,1,T): padded keys get the dtype's lowest value, as transformers does
        bias = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.encoder.layer:
            hidden = layer(hidden, bias)
        return SimpleNamespace(last_hidden_state=hidden)

    @classmethod
    def load(cls, directory: Path) -> "BertEncoder":
        """The folder's ``config.json`` and ``model.safetensors`` (tensors only); every encoder weight must be
        there (the pooler's and the ``position_ids`` buffer are left out), ValueError otherwise."""
        from safetensors.torch import load_file

        shape = BertShape.of(json.loads((directory / "config.json").read_text(encoding="utf-8")))
        model = cls(shape)
        state = load_file(str(directory / "model.safetensors"))
        prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{directory} does not hold this BERT's weights: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        return model.eval()
