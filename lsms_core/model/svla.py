"""Scale-aware Vision-Language Attention (paper section III-C, eqs. 4-10).

SVLA is SegNeXt's MSCA attention plus one additive language term. Module names follow
SegNeXt's ``AttentionModule`` (``conv0``, ``conv{j}_1``, ``conv{j}_2``, ``conv3``) so an
MSCAN ImageNet checkpoint loads into it 1:1; with the language branch off it *is* MSCA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A kernel-1 ``Conv1d`` applied as one matmul: (B,C_in,N) -> (B,C_out,N).

    Same parameters and result as ``conv(x)``; oneDNN's 1-D convolution path is up to ~8x
    slower on the CPU at N = 14400 pixels (stage 1 at 480x480).
    """
    out = torch.matmul(conv.weight.squeeze(-1), x)
    return out if conv.bias is None else out + conv.bias[:, None]


class PixelWordAttention(nn.Module):
    """Language-Guided Branch (eqs. 5-9): each pixel attends over the expression's words.

    ``q = IN(w_v1 V)``, ``V2 = IN(w_v2 V)``, ``k = w_l1 L``, ``v = w_l2 L``,
    ``A = softmax(q^T k / sqrt(C)) v^T`` over real words, ``Att_L = IN(w_f A) * V2``.
    IN is InstanceNorm1d without affine parameters; a single head.
    """

    def __init__(self, dim: int, text_dim: int, pixel_map: bool = True) -> None:
        super().__init__()
        self.vis_query = nn.Conv1d(dim, dim, 1)  # w_v1
        self.lang_key = nn.Conv1d(text_dim, dim, 1)  # w_l1
        self.lang_value = nn.Conv1d(text_dim, dim, 1)  # w_l2
        self.out_proj = nn.Conv1d(dim, dim, 1)  # w_f
        self.vis_value = nn.Conv1d(dim, dim, 1) if pixel_map else None  # w_v2
        self.scale = 1.0 / math.sqrt(dim)

    @staticmethod
    def _instance_norm(x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, eps=1e-5)

    def forward(self, v_pre: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """v_pre (B,C,H,W); words (B,T,C_l); word_mask (B,T) with 1 for real tokens -> (B,C,H,W)."""
        b, c, h, w = v_pre.shape
        flat = v_pre.flatten(2)  # (B, C, HW)
        query = self._instance_norm(pointwise(self.vis_query, flat))  # (B, C, HW)
        words_t = words.transpose(1, 2)  # (B, C_l, T)
        key = pointwise(self.lang_key, words_t)  # (B, C, T)
        value = pointwise(self.lang_value, words_t)  # (B, C, T)
        scores = torch.bmm(query.transpose(1, 2), key) * self.scale  # (B, HW, T)
        padded = ~word_mask.bool().unsqueeze(1)  # (B, 1, T)
        scores = scores.masked_fill(padded, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        attended = torch.bmm(value, weights.transpose(1, 2))  # (B, C, HW)
        out = self._instance_norm(pointwise(self.out_proj, attended))
        if self.vis_value is not None:
            out = out * self._instance_norm(pointwise(self.vis_value, flat))  # the Pixel-Map product
        return out.view(b, c, h, w)


class SVLA(nn.Module):
    """``F_att = conv3(V_pre + sum_j ConvUnit_j(V_pre) + Att_L) * V`` with ``V_pre = DW5x5(V)``.

    ConvUnit_j is a depthwise (1 x d_j) then (d_j x 1) convolution, d = ``conv_units``.
    ``text_dim`` None builds the text-free variant (exactly SegNeXt's MSCA).
    """

    def __init__(self, dim: int, conv_units: tuple[int, ...] = (7, 11, 21),
                 text_dim: int | None = None, pixel_map: bool = True) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.num_units = len(conv_units)
        for j, k in enumerate(conv_units):
            setattr(self, f"conv{j}_1", nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim))
            setattr(self, f"conv{j}_2", nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim))
        self.conv3 = nn.Conv2d(dim, dim, 1)
        self.language = PixelWordAttention(dim, text_dim, pixel_map) if text_dim else None

    def forward(self, x: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B,C,H,W); words (B,T,C_l) and word_mask (B,T) unless text-free -> (B,C,H,W)."""
        v_pre = self.conv0(x)
        attn = v_pre
        for j in range(self.num_units):
            attn = attn + getattr(self, f"conv{j}_2")(getattr(self, f"conv{j}_1")(v_pre))
        if self.language is not None:
            if words is None or word_mask is None:
                raise ValueError("this model uses text: pass word features and their mask")
            attn = attn + self.language(v_pre, words, word_mask)
        return self.conv3(attn) * x
