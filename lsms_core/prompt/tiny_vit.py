"""LiteMedSAM's image encoder: TinyViT-5M adapted to 3x256x256 input, 256x64x64 embedding.

The architecture is TinyViT (Wu et al., ECCV 2022; MIT licence) as MobileSAM and LiteMedSAM use it,
written here without timm: inference only (no stochastic depth, no gradient checkpointing, no
layer-wise learning-rate decay). Module and parameter names are those of LiteMedSAM's checkpoint
(``patch_embed.seq.0.c``, ``layers.1.blocks.0.attn.attention_biases``, ``neck.0`` ...) so its
state dict loads with ``strict=True``.

LiteMedSAM's changes to TinyViT: the patch embedding is two 1x1 convolutions (no stride: the first
stage works at 256x256), and the last patch merging keeps the resolution, so the four stages run at
256, 128, 64 and 64 pixels and a SAM-style neck maps 320 channels to the 256x64x64 embedding.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

# LiteMedSAM's TinyViT-5M: per-stage widths, depths, heads and attention windows.
EMBED_DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (2, 4, 5, 10)
WINDOW_SIZES = (7, 7, 14, 7)
IMAGE_SIZE = 256
EMBEDDING_DIM = 256
EMBEDDING_SIZE = 64


class Conv2d_BN(nn.Sequential):  # noqa: N801 - the checkpoint's name
    """Convolution without bias, then batch norm (``c``, ``bn``)."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))


    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """One convolution with the batch norm folded in (inference: the same output up to rounding)."""
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          groups=conv.groups, bias=True).to(conv.weight.device)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


def fuse_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every Conv2d_BN of ``module`` into one convolution, in place, for inference (the state
    dict then no longer has the checkpoint's names: load the weights first)."""
    for name, child in module.named_children():
        if isinstance(child, Conv2d_BN):
            setattr(module, name, child.fused())
        else:
            fuse_batch_norms(child)
    return module


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of a (B,C,H,W) map (SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """(B,3,S,S) -> (B,C,S,S): two 1x1 conv-BN with a GELU between (LiteMedSAM keeps the resolution)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2d_BN(in_chans, embed_dim // 2), nn.GELU(), Conv2d_BN(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU after each."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2d_BN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, chans)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Tokens or map at ``resolution`` -> tokens (B,L',C'): 1x1, 3x3 depthwise (stride 2, or 1 into
    the 320-channel last stage, as LiteMedSAM has it), 1x1."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2d_BN(dim, out_dim)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            height, width = self.resolution
            x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.conv3(self.act(self.conv2(x)))
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """Stage 1: MBConv blocks on the (B,C,H,W) map, then patch merging."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, out_dim: int, expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Mlp(nn.Module):
    """Pre-norm MLP of a TinyViT block."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Pre-norm multi-head self-attention inside one window, with a learned bias per head and
    per (|dy|, |dx|) offset between the window's positions (LeViT's attention bias)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * key_dim * num_heads)
        self.proj = nn.Linear(key_dim * num_heads, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        indices = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets))
                   for a in points for b in points]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(indices).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,N,C)
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale key_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTBlock(nn.Module):
    """Window attention (windows padded at the bottom/right edge), 3x3 depthwise local conv, MLP."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window_size: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.resolution = resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.resolution
        batch, tokens, chans = x.shape
        size = self.window_size
        if height == size and width == size:
            attended = self.attn(x)
        else:
            grid = x.view(batch, height, width, chans)
            pad_b, pad_r = (size - height % size) % size, (size - width % size) % size
            if pad_b or pad_r:
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            rows, cols = (height + pad_b) // size, (width + pad_r) // size
            windows = grid.view(batch, rows, size, cols, size, chans).transpose(2, 3).reshape(
                batch * rows * cols, size * size, chans)
            grid = self.attn(windows).view(batch, rows, cols, size, size, chans).transpose(2, 3).reshape(
                batch, rows * size, cols * size, chans)
            attended = grid[:, :height, :width].reshape(batch, tokens, chans)
        x = x + attended
        x = self.local_conv(x.transpose(1, 2).reshape(batch, chans, height, width))
        x = x.view(batch, chans, tokens).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Stages 2-4: TinyViT blocks on tokens, then patch merging (none after the last stage)."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 out_dim: int | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, resolution, num_heads, window_size) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """(B,3,256,256) in [0,1] -> (B,256,64,64) image embedding."""

    def __init__(self, image_size: int = IMAGE_SIZE, embed_dims=EMBED_DIMS, depths=DEPTHS, num_heads=NUM_HEADS,
                 window_sizes=WINDOW_SIZES, expand_ratio: float = 4.0) -> None:
        super().__init__()
        self.image_size = image_size
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            # Stage resolutions 256, 128, 64, 64: the last merging does not downsample.
            side = image_size // 2 ** (i - 1 if i == 3 else i)
            out_dim = embed_dims[i + 1] if i + 1 < len(embed_dims) else None
            if i == 0:
                self.layers.append(ConvLayer(dim, (side, side), depths[i], out_dim, expand_ratio))
            else:
                self.layers.append(BasicLayer(dim, (side, side), depths[i], num_heads[i], window_sizes[i], out_dim))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], EMBEDDING_DIM, kernel_size=1, bias=False), LayerNorm2d(EMBEDDING_DIM),
            nn.Conv2d(EMBEDDING_DIM, EMBEDDING_DIM, kernel_size=3, padding=1, bias=False), LayerNorm2d(EMBEDDING_DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        side = self.image_size // 4
        return self.neck(x.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2))
