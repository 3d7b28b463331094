"""The one place where a raw slice becomes model input and logits become a mask.

Training, evaluation, the CLI and the napari widget all call these functions, so the model
sees the same window, size and normalisation everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import PreprocessConfig
from .pixels import FLOAT32_MAX, ImageError, check_slice, luminance, to_float32  # noqa: F401 - re-exported
from .windows import intensity_range, percentile_limits, to_unit_grey, window_limits  # noqa: F401 - re-exported


def resize_grey(grey: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Grey (H,W) -> (1,S,S) float32 at S = ``size`` (bilinear, antialiased when shrinking): the
    resize step of ``to_model_input``; unchanged (as a tensor) when already S x S."""
    grid = (torch.from_numpy(np.asarray(grey)) if not isinstance(grey, torch.Tensor) else grey)[None, None]
    if grid.shape[-2:] != (size, size):
        grid = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return grid[0]


def normalise(grey: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Grey (...,1,S,S) in [0,1] -> model input (...,3,S,S): the grey channel repeated three times,
    then ``(x - config.mean) / config.std`` per channel. One sample (1,S,S) or a batch (B,1,S,S)."""
    mean = torch.tensor(config.mean, dtype=torch.float32, device=grey.device).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32, device=grey.device).view(3, 1, 1)
    return (grey.expand(*grey.shape[:-3], 3, -1, -1) - mean) / std


def to_model_input(image: np.ndarray, config: PreprocessConfig, hounsfield: bool) -> torch.Tensor:
    """Raw slice (H,W) -> normalised model input (3,S,S) float32, S = config.image_size.

    hounsfield: True for CT in HU (clipped to the configured window), False for images
    without physical units (X-ray, MR, PNG), scaled between their own percentiles.
    Three steps, each usable alone: ``to_unit_grey`` -> ``resize_grey`` -> ``normalise``.
    """
    return normalise(resize_grey(to_unit_grey(image, config, hounsfield), config.image_size), config)


def to_prompt_input(grey: np.ndarray | torch.Tensor, size: int = 256) -> tuple[torch.Tensor, tuple[int, int]]:
    """Windowed grey (H,W) in [0,1] (``to_unit_grey``) -> the prompt model's input (3,S,S) and the
    (h,w) the image fills in it, S = ``size``.

    LiteMedSAM's convention (lsms_core/prompt): the longest side resized to S keeping the aspect
    ratio (bilinear, antialiased when shrinking), the grey min-max scaled to [0,1] on this image,
    zeros padded at the bottom and right, the channel repeated three times (no mean/std)."""
    grid = (torch.from_numpy(np.asarray(grey, dtype=np.float32)) if not isinstance(grey, torch.Tensor)
            else grey.float())[None, None]
    height, width = grid.shape[-2:]
    scale = size / max(height, width)
    filled = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
    if (height, width) != filled:
        grid = F.interpolate(grid, size=filled, mode="bilinear", align_corners=False, antialias=True)
    low, high = grid.amin(), grid.amax()
    grid = (grid - low) / torch.clamp(high - low, min=1e-8)
    grid = F.pad(grid, (0, size - filled[1], 0, size - filled[0]))
    return grid[0].expand(3, -1, -1), filled


def to_model_target(mask: np.ndarray, size: int) -> torch.Tensor:
    """Binary mask (H,W) -> training target (1,S,S) float32 in {0,1}, nearest-neighbour resized."""
    target = torch.from_numpy(np.asarray(mask).astype(np.float32))[None, None]
    if target.shape[-2:] != (size, size):
        target = F.interpolate(target, size=(size, size), mode="nearest")
    return target[0]


def to_output_mask(logits: torch.Tensor, size: tuple[int, int], threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits (1,S,S) or (S,S) -> (mask bool (H,W), probability float32 (H,W)) at ``size``.

    Logits are resized bilinearly before the sigmoid, so the mask edge is smooth at any size.
    """
    grid = logits.detach().float().reshape(1, 1, *logits.shape[-2:])
    if tuple(grid.shape[-2:]) != tuple(size):
        grid = F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)
    probability = torch.sigmoid(grid)[0, 0].cpu().numpy()
    return probability > threshold, probability
