"""Language-Guided Vision Encoder (paper section III-B): stem, down-sampling, SVLA blocks.

Pre-norm blocks as in SegNeXt's MSCAN, with SegNeXt's module names (``patch_embed{i}``,
``block{i}``, ``norm{i}``, ``attn.proj_1`` ...) so MSCAN ImageNet weights load by name.
"""

from __future__ import annotations

import torch
from torch import nn

from .svla import SVLA


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class StemConv(nn.Module):
    """Stage-1 embedding: conv3x3 s2 + BN + GELU + conv3x3 s2 + BN. (B,3,S,S) -> (B,C1,S/4,S/4)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(3, out_channels // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels // 2),
            nn.GELU(),
            nn.Conv2d(out_channels // 2, out_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DownSample(nn.Module):
    """Stages 2-4: conv3x3 stride 2 with bias + BN, no activation. Halves H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class SpatialAttention(nn.Module):
    """``proj_2(SVLA(GELU(proj_1(y)), L)) + y``: the attention half of a block."""

    def __init__(self, dim: int, svla: SVLA) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = svla
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, y: torch.Tensor, words: torch.Tensor | None, word_mask: torch.Tensor | None) -> torch.Tensor:
        out = self.spatial_gating_unit(self.activation(self.proj_1(y)), words, word_mask)
        return self.proj_2(out) + y


class DepthwiseConv3x3(nn.Module):
    """Depthwise 3x3 convolution, wrapped so its weight sits at MSCAN's ``dwconv.dwconv`` path."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class FeedForward(nn.Module):
    """``fc2(GELU(DW3x3(fc1(x))))`` with hidden width ``ratio * dim``."""

    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        hidden = dim * ratio
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = DepthwiseConv3x3(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class EncoderBlock(nn.Module):
    """Pre-norm block: ``x += DropPath(g1 * attn(BN1 x))``; ``x += DropPath(g2 * mlp(BN2 x))``."""

    def __init__(self, dim: int, mlp_ratio: int, drop_path: float, conv_units: tuple[int, ...],
                 text_dim: int | None, pixel_map: bool) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim, SVLA(dim, conv_units, text_dim, pixel_map))
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = FeedForward(dim, mlp_ratio)
        self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(dim))

    def forward(self, x: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.norm1(x), words, word_mask)
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * a)
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B,C,H,W) map (MSCAN's stage-end ``norm{i}``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def coordinate_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(1,2,H,W) pixel-centre coordinates in [-1, 1]: channel 0 rows (top -1), channel 1 columns (left -1)."""
    rows = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) * (2.0 / height) - 1.0
    cols = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) * (2.0 / width) - 1.0
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij")).unsqueeze(0)


class PositionEncoding(nn.Module):
    """Adds ``conv1x1(row, column coordinates)`` to a stage's (B,C,H,W) input (CoordConv, Liu et al.
    2018). Zero-initialised, so a model starts as the paper's and learns where "upper" and "left"
    are instead of inferring it from zero padding at the borders."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2, dim, 1)

    def reset(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = coordinate_grid(x.shape[-2], x.shape[-1], self.proj.weight)
        return x + self.proj(grid).to(x.dtype)


class Encoder(nn.Module):
    """Four stages; returns [F1, F2, F3, F4] at strides 4, 8, 16, 32 with ``widths`` channels.

    ``position_encoding`` adds a PositionEncoding after each stage's down-sampling (not a paper
    module: the ``lsms-grounded`` preset, docs/model.md).
    """

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], mlp_ratios: tuple[int, ...],
                 drop_path: float, conv_units: tuple[int, ...], text_dim: int | None,
                 pixel_map: bool, position_encoding: bool = False) -> None:
        super().__init__()
        self.position_encoding = position_encoding
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]  # linear 0 -> drop_path
        cursor = 0
        for i, (width, depth, ratio) in enumerate(zip(widths, depths, mlp_ratios), start=1):
            embed = StemConv(width) if i == 1 else DownSample(widths[i - 2], width)
            blocks = nn.ModuleList(
                EncoderBlock(width, ratio, rates[cursor + j], conv_units, text_dim, pixel_map)
                for j in range(depth))
            cursor += depth
            setattr(self, f"patch_embed{i}", embed)
            setattr(self, f"block{i}", blocks)
            setattr(self, f"norm{i}", ChannelLayerNorm(width))
            if position_encoding:
                setattr(self, f"pos_embed{i}", PositionEncoding(width))

    def forward(self, image: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """image (B,3,S,S) -> [F_i (B, widths[i], S/2^(i+1), S/2^(i+1)) for i in 1..4]."""
        features = []
        x = image
        for i in range(1, 5):
            x = getattr(self, f"patch_embed{i}")(x)
            if self.position_encoding:
                x = getattr(self, f"pos_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, words, word_mask)
            x = getattr(self, f"norm{i}")(x)
            features.append(x)
        return features
