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

    def _initial_bases(self, batch: int, dim: int, device: torch.device) -> torch.Tensor:
        if self.training:
            bases = torch.rand(batch, dim, self.rank, device=device)
        else:
            generator = torch.Generator().manual_seed(self.eval_seed)
            bases = torch.rand(1, dim, self.rank, generator=generator).expand(batch, -1, -1).to(device)
        return F.normalize(bases, dim=1)

    @staticmethod
    def _update_coef(x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        numerator = torch.bmm(x.transpose(1, 2), bases)  # (B,N,R)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * numerator / (denominator + 1e-6)

    @staticmethod
    def _update_bases(x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        numerator = torch.bmm(x, coef)  # (B,D,R)
        denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
        return bases * numerator / (denominator + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,D,H,W), non-negative -> its rank-R reconstruction (B,D,H,W), fp32."""
        b, d, h, w = x.shape
        autocast_device = "cuda" if x.device.type == "cuda" else "cpu"
        with torch.autocast(device_type=autocast_device, enabled=False):
            flat = x.float().reshape(b, d, h * w)
            bases = self._initial_bases(b, d, x.device)
            coef = torch.softmax(torch.bmm(flat.transpose(1, 2), bases), dim=-1)
            for _ in range(self.train_steps if self.training else self.eval_steps):
                coef = self._update_coef(flat, bases, coef)
                bases = self._update_bases(flat, bases, coef)
            coef = self._update_coef(flat, bases, coef)
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
    """

    def __init__(self, in_channels: tuple[int, ...], ham_channels: int, channels: int,
                 use_hamburger: bool, nmf: NMF2D, dropout: float) -> None:
        super().__init__()
        self.squeeze = conv_gn_relu(sum(in_channels), ham_channels)
        self.hamburger = Hamburger(ham_channels, nmf) if use_hamburger else nn.Identity()
        self.align = conv_gn_relu(ham_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, 1, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        aligned = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                   for f in features]
        x = self.hamburger(self.squeeze(torch.cat(aligned, dim=1)))
        embedding = self.align(x)
        return self.conv_seg(self.dropout(embedding)), embedding
