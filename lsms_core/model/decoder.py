"""Full-Scale Decoder (paper section III-D): SegNeXt's LightHamHead over F2..F4.

Position Alignment (bilinear resize to one size) -> concat -> squeeze -> Hamburger (NMF2D)
-> align -> classifier. Module names follow mmseg's ``LightHamHead``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_gn_relu(in_channels: int, out_channels: int, relu: bool = True) -> nn.Sequential:
    """1x1 conv without bias + GroupNorm(32) (+ ReLU): mmcv's ``ConvModule`` with GN."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=False),
                               nn.GroupNorm(32, out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a (B,D,H,W) map into ``rank`` bases, by K
    multiplicative-update steps (Hamburger's "ham").

    X (B,D,N) ~= U (B,D,R) C^T, C (B,N,R). Bases start from U(0,1), L2-normalised over D,
    fresh every forward; in eval mode they are drawn from a fixed seed on the CPU, so the
    same input gives the same output on every device. Always runs in fp32: the 1e-6 guard
    is subnormal in fp16. Gradients flow through every step.
    """

    def __init__(self, rank: int = 16, train_steps: int = 6, eval_steps: int = 7, eval_seed: int = 0) -> None:
        super().__init__()
        self.rank = rank
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.eval_seed = eval_seed
        # (dim, device) -> the eval bases (1,D,R): drawn once, then a constant, so that an exported graph
        # (lsms_core.compiled) holds them as a tensor instead of a random generator it cannot trace
        self._eval_bases: dict[tuple[int, str], torch.Tensor] = {}

    def _initial_bases(self, batch: int, dim: int, device: torch.device) -> torch.Tensor:
        if self.training:
            return F.normalize(torch.rand(batch, dim, self.rank, device=device), dim=1)
        key = (dim, str(device))
        if key not in self._eval_bases:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode
                generator = torch.Generator().manual_seed(self.eval_seed)
                bases = torch.rand(1, dim, self.rank, generator=generator)
                self._eval_bases[key] = F.normalize(bases, dim=1).to(device)
        return self._eval_bases[key].expand(batch, -1, -1)

    @staticmethod
    def _update_coef(pixels: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        numerator = torch.bmm(pixels, bases)  # (B,N,R)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * numerator / (denominator + 1e-6)

    @staticmethod
    def _update_bases(pixels: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        numerator = torch.bmm(pixels.transpose(1, 2), coef)  # (B,D,R)
        denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
        return bases * numerator / (denominator + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,D,H,W), non-negative -> its rank-R reconstruction (B,D,H,W), fp32, in x's memory format."""
        b, d, h, w = x.shape
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        autocast_device = "cuda" if x.device.type == "cuda" else "cpu"
        with torch.autocast(device_type=autocast_device, enabled=False):
            # X^T as (B,N,D): a view, not a copy, for both memory formats (BLAS takes the strides).
            pixels = x.float().permute(0, 2, 3, 1).reshape(b, h * w, d)
            bases = self._initial_bases(b, d, x.device)
            coef = torch.softmax(torch.bmm(pixels, bases), dim=-1)
            for _ in range(self.train_steps if self.training else self.eval_steps):
                coef = self._update_coef(pixels, bases, coef)
                bases = self._update_bases(pixels, bases, coef)
            coef = self._update_coef(pixels, bases, coef)
            if channels_last:
                return torch.bmm(coef, bases.transpose(1, 2)).reshape(b, h, w, d).permute(0, 3, 1, 2)
            return torch.bmm(bases, coef.transpose(1, 2)).reshape(b, d, h, w)


class Hamburger(nn.Module):
    """``ReLU(x + GN(conv(NMF(ReLU(conv(x))))))``: global context by low-rank factorisation."""

    def __init__(self, channels: int, nmf: NMF2D) -> None:
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)
        self.ham = nmf
        self.ham_out = conv_gn_relu(channels, channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enjoy = self.ham(F.relu(self.ham_in(x)))
        enjoy = self.ham_out(enjoy.to(x.dtype))
        return F.relu(x + enjoy)


class FullScaleDecoder(nn.Module):
    """Aligns the chosen encoder stages to one size, fuses them and predicts one logit map.

    ``in_channels`` are the widths of the chosen stages (in order). ``forward`` returns the
    logits (B,1,h,w) at the decoder size and the ``align`` features (B,channels,h,w) that the
    contrastive loss uses.

    ``literal_squeeze`` True runs the paper's order (resize, concat, squeeze) instead of the
    equivalent cheaper one; ``lsms_core.complexity`` sets it to count MACs as the paper does.
    """

    literal_squeeze = False

    def __init__(self, in_channels: tuple[int, ...], ham_channels: int, channels: int,
                 use_hamburger: bool, nmf: NMF2D, dropout: float) -> None:
        super().__init__()
        self.squeeze = conv_gn_relu(sum(in_channels), ham_channels)
        self.hamburger = Hamburger(ham_channels, nmf) if use_hamburger else nn.Identity()
        self.align = conv_gn_relu(ham_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, 1, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.literal_squeeze:
            aligned = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                       for f in features]
            squeezed = self.squeeze(torch.cat(aligned, dim=1))
        else:
            squeezed = self._squeeze_aligned(features, size)
        x = self.hamburger(squeezed)
        embedding = self.align(x)
        return self.conv_seg(self.dropout(embedding)), embedding

    def _squeeze_aligned(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """``squeeze(concat(resize(F_i)))`` computed as ``GN+ReLU(sum_i resize(W_i F_i))``.

        The squeeze is a bias-free 1x1 convolution and bilinear resizing mixes pixels with the
        same weights in every channel, so the two commute: each stage is projected at its own
        (smaller) size and only the ``ham_channels`` result is resized. Same function and the
        same parameters as the literal order, without the (B, sum C_i, h, w) concatenation;
        at 480x480 this saves ~1.6 of the preset's 10.6 GMACs.
        """
        conv, norm_and_relu = self.squeeze[0], self.squeeze[1:]
        weights = conv.weight.split([f.shape[1] for f in features], dim=1)
        squeezed = None
        for feature, weight in zip(features, weights):
            projected = F.conv2d(feature, weight)
            if projected.shape[-2:] != size:
                projected = F.interpolate(projected, size=size, mode="bilinear", align_corners=False)
            squeezed = projected if squeezed is None else squeezed + projected
        return norm_and_relu(squeezed)
