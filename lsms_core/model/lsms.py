"""The LSMS network: language-guided encoder + Full-Scale Decoder (paper Fig. 4).

The text encoder is not part of this module: LSMS consumes word features (B,T,C_l) and
their mask, so frozen features can be cached and any BERT-family encoder plugged in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .decoder import FullScaleDecoder, NMF2D
from ..selection import feature_dim as selection_feature_dim, geometry_width
from .encoder import Encoder, PositionEncoding
from .selector import build_selector


class LSMSOutput(NamedTuple):
    """What training needs from one forward pass.

    logits: (B,1,S,S) mask logits at the input size.
    embedding: (B,D,h,w) the decoder's ``align`` features (D = decoder_channels).
    sentence: (B,D) projected mean word feature, or None for the text-free model.
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    sentence: torch.Tensor | None


class LSMS(nn.Module):
    """Language-guided Scale-aware MedSegmentor.

    ``forward(image, words, word_mask)`` maps a normalised image (B,3,S,S), S a multiple of
    32, and word features (B,T,C_l) with mask (B,T) (1 = real token) to logits (B,1,S,S).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        text_dim = config.text_dim if config.use_text else None
        self.backbone = Encoder(config.widths, config.depths, config.mlp_ratios, config.drop_path,
                                config.conv_units, text_dim, config.pixel_map, config.position_encoding)
        nmf = NMF2D(config.nmf_rank, config.nmf_train_steps, config.nmf_eval_steps, config.nmf_eval_seed)
        self.decode_head = FullScaleDecoder(
            tuple(config.widths[s - 1] for s in config.fsd_stages), config.ham_channels,
            config.decoder_channels, config.fsd, nmf, config.decoder_dropout)
        # L_avg projection of the contrastive loss (eq. 14); used in training only.
        self.sentence_proj = nn.Linear(config.text_dim, config.decoder_channels) if config.use_text else None
        self.selector = (build_selector(config.selector_kind,
                                        selection_feature_dim(config.decoder_channels, config.selector_clusters),
                                        config.text_dim, config.selector_hidden,
                                        geometry_width(config.selector_clusters)
                                        if config.selector_features == "geometry" else None,
                                        config.selector_layers, config.selector_members)
                         if config.select_lesions else None)
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, PositionEncoding):
                module.reset()  # zero: starts as the paper's model

    @property
    def uses_text(self) -> bool:
        return self.config.use_text

    def forward_features(self, image: torch.Tensor, words: torch.Tensor | None = None,
                         word_mask: torch.Tensor | None = None) -> LSMSOutput:
        if self.uses_text:
            if words is None or word_mask is None:
                raise ValueError("this LSMS model uses text: pass word features (B,T,C_l) and their mask (B,T)")
            if words.shape[-1] != self.config.text_dim:
                raise ValueError(f"word features have {words.shape[-1]} channels but this model was built "
                                 f"for a text encoder with {self.config.text_dim}")
            word_mask = word_mask.to(words.dtype)
        else:
            words = word_mask = None
        size = image.shape[-2:]
        if size[0] % 32 or size[1] % 32:
            raise ValueError(f"image size {tuple(size)} must be a multiple of 32 in both axes")
        features = self.backbone(image, words, word_mask)
        stride = self.config.fsd_stride
        decoder_size = (size[0] // stride, size[1] // stride)
        chosen = [features[s - 1] for s in self.config.fsd_stages]
        logits, embedding = self.decode_head(chosen, decoder_size)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        sentence = None
        if self.sentence_proj is not None:
            mean_word = (words * word_mask.unsqueeze(-1)).sum(1) / word_mask.sum(1, keepdim=True).clamp(min=1)
            sentence = self.sentence_proj(mean_word)
        return LSMSOutput(logits, embedding, sentence)

    def forward(self, image: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None, features: bool = False) -> torch.Tensor | LSMSOutput:
        """image (B,3,S,S), words (B,T,C_l), word_mask (B,T) -> logits (B,1,S,S).

        features=True returns the whole LSMSOutput (what the training loss needs; DDP only
        synchronises gradients of what goes through ``forward``).
        """
        output = self.forward_features(image, words, word_mask)
        return output if features else output.logits

    def stage_features(self, image: torch.Tensor, words: torch.Tensor | None = None,
                       word_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """[F1..F4] of the encoder, for inspection and tests."""
        return self.backbone(image, words if self.uses_text else None, word_mask if self.uses_text else None)


def _init_weights(module: nn.Module) -> None:
    """MSCAN's initialisation: Conv2d normal(0, sqrt(2/fan_out)), Linear trunc-normal 0.02, norms (1,0).

    The language branch's Conv1d projections keep PyTorch's fan-in default, as in LAVT and
    SLViT: a fan-out init over 768 input words would blow up the attention logits.
    """
    if isinstance(module, nn.Conv2d):
        fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_model(config: ModelConfig) -> LSMS:
    """A freshly initialised LSMS for ``config``."""
    return LSMS(config)
