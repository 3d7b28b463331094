"""The one place where a raw slice becomes model input and logits become a mask.

Training, evaluation, the CLI and the napari widget all call these functions, so the model
sees the same window, size and normalisation everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import PreprocessConfig


class ImageError(ValueError):
    """The pixel data cannot be used as a slice; the message says what is wrong."""


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3 or 4) colour -> (H,W) float32 grey, ITU-R BT.601 weights (alpha ignored)."""
    return np.asarray(rgb)[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_slice(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as float32 (H,W) or raise ImageError naming the problem."""
    array = np.asarray(image)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise ImageError(f"expected one 2-D slice (H,W), got an array of shape {array.shape}: "
                         "pick one slice of a stack, or convert colour images to grey")
    if array.size == 0:
        raise ImageError("the image is empty (0 pixels)")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ImageError(f"pixel type {array.dtype} is not a real number type")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ImageError(f"the image has {bad} NaN or infinite pixels: replace them (e.g. np.nan_to_num) first")
    return array


def intensity_range(image: np.ndarray, config: PreprocessConfig, hounsfield: bool) -> tuple[float, float]:
    """(low, high) mapped to 0 and 1: the CT window in HU, else the image's own percentiles."""
    if hounsfield:
        half = config.window_width / 2.0
        return config.window_center - half, config.window_center + half
    low, high = np.percentile(image, config.percentiles)
    return float(low), float(high)


def to_model_input(image: np.ndarray, config: PreprocessConfig, hounsfield: bool) -> torch.Tensor:
    """Raw slice (H,W) -> normalised model input (3,S,S) float32, S = config.image_size.

    hounsfield: True for CT in HU (clipped to the configured window), False for images
    without physical units (X-ray, MR, PNG), scaled between their own percentiles.
    """
    array = check_slice(image)
    low, high = intensity_range(array, config, hounsfield)
    scale = 1.0 / (high - low) if high > low else 0.0
    grey = torch.from_numpy(np.clip((array - low) * scale, 0.0, 1.0))[None, None]
    size = config.image_size
    if grey.shape[-2:] != (size, size):
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(config.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(config.std, dtype=torch.float32)[:, None, None]
    return (grey[0].expand(3, -1, -1) - mean) / std


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
