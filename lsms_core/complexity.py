"""Parameter and MAC counts of LSMS, as the paper's lineage reports them.

MACs are ``FlopCounterMode`` FLOPs / 2 of one eval-mode forward at batch 1, counted in the
paper's order of operations (``gmacs``, comparable with its tables) and as this implementation
runs them (``gmacs_executed``: the decoder squeezes before resizing). Counting runs on
PyTorch's meta device, so even large presets are counted in a fraction of a second without
allocating weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig
from .model import build_model

BERT_BASE_NAME = "bert-base-uncased (config only)"


@dataclass
class Complexity:
    """Counts in millions of parameters and billions of MACs."""

    preset: str
    use_text: bool
    text_dim: int
    image_size: int
    tokens: int
    params_m: float  # LSMS for inference: excludes the text encoder and the training-only L_con projection
    params_train_m: float  # + the contrastive sentence projection
    gmacs: float  # the paper's order of operations (resize, concat, squeeze)
    gmacs_executed: float | None = None  # what this implementation runs (squeeze before resize)
    text_encoder: str | None = None
    text_encoder_params_m: float | None = None
    text_encoder_gmacs: float | None = None

    @property
    def params_total_m(self) -> float | None:
        if self.text_encoder_params_m is None:
            return None if self.use_text else self.params_m
        return self.params_m + self.text_encoder_params_m

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "params_total_m": self.params_total_m}


def _macs(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / 2


def count_model(config: ModelConfig, image_size: int = 480, tokens: int = 20, preset: str = "custom") -> Complexity:
    """Params and MACs of LSMS at ``image_size`` with ``tokens`` words (text encoder excluded)."""
    with torch.device("meta"):
        model = build_model(config).eval()
        image = torch.zeros(1, 3, image_size, image_size)
        words = torch.zeros(1, tokens, config.text_dim)
        mask = torch.ones(1, tokens)
    params_train = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.sentence_proj.parameters()) if model.sentence_proj is not None else 0
    executed = _macs(model, image, words, mask)
    model.decode_head.literal_squeeze = True
    literal = _macs(model, image, words, mask)
    return Complexity(preset, config.use_text, config.text_dim, image_size, tokens,
                      (params_train - head) / 1e6, params_train / 1e6, literal / 1e9, executed / 1e9)


def text_encoder_config(text_dim: int, path: str | None = None):
    """A transformers config for the encoder: ``path``'s own, the offline default at 384,
    or bert-base-uncased's (the paper's) at 768. None when nothing fits ``text_dim``."""
    from transformers import AutoConfig, BertConfig

    from .text_encoder import resolve_text_encoder_path

    if path is not None or text_dim == 384:
        directory = resolve_text_encoder_path(path)
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
        name = directory.name if path is not None else "all-MiniLM-L6-v2"
        return (config, name) if config.hidden_size == text_dim else (None, None)
    if text_dim == 768:
        return BertConfig(), BERT_BASE_NAME
    return None, None


def count_text_encoder(result: Complexity, path: str | None = None) -> Complexity:
    """Add the text encoder's params and MACs (at ``result.tokens``) where its config is known."""
    if not result.use_text:
        return result
    config, name = text_encoder_config(result.text_dim, path)
    if config is None:
        return result
    from transformers import AutoModel

    with torch.device("meta"):
        encoder = AutoModel.from_config(config).eval()
        ids = torch.zeros(1, result.tokens, dtype=torch.long)  # no mask: all tokens real
    params = sum(p.numel() for p in encoder.parameters())
    return dataclasses.replace(result, text_encoder=name, text_encoder_params_m=params / 1e6,
                               text_encoder_gmacs=_macs(encoder, ids) / 1e9)


def format_table(rows: list[Complexity]) -> str:
    header = ("| preset | text | params M (excl. text enc.) | GMACs | GMACs executed | text encoder "
              "| total params M |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        total = f"{r.params_total_m:.2f}" if r.params_total_m is not None else "-"
        lines.append(f"| {r.preset} | {'yes' if r.use_text else 'no'} | {r.params_m:.2f} | {r.gmacs:.2f} | "
                     f"{r.gmacs_executed:.2f} | "
                     f"{r.text_encoder or '-'} | {total} |")
    return "\n".join(lines)


def to_json(result: Complexity) -> str:
    return json.dumps(result.to_dict(), sort_keys=True)
