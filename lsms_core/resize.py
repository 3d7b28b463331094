"""Resizing in NumPy, equal to PyTorch's (to float rounding), for the path that runs without PyTorch
(``lsms_core.quick``).

Every resize here is separable: a (H,W) array becomes ``rows @ array @ columns.T`` with one (h,H) and one
(w,W) weight matrix per axis. The weights are those of ``torch.nn.functional.interpolate`` (bilinear,
``align_corners=False``, with or without ``antialias``) and ``adaptive_avg_pool2d``; tests/test_resize.py
compares them with PyTorch on odd and even sizes, shrinking and growing.
"""

from __future__ import annotations

import math

import numpy as np


def bilinear_weights(in_size: int, out_size: int, antialias: bool = False) -> np.ndarray:
    """(out_size, in_size) float32 weights of a 1-D bilinear resize (half-pixel centres).

    ``antialias``: when shrinking, the triangle filter is widened by the scale (each output pixel averages
    all the input pixels it covers, as PyTorch's ``antialias=True`` and PIL do); when growing it is plain
    bilinear either way."""
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    if antialias and scale > 1.0:
        support, inverse = scale, 1.0 / scale
        for i in range(out_size):
            centre = scale * (i + 0.5)
            low = max(int(centre - support + 0.5), 0)
            high = min(int(centre + support + 0.5), in_size)
            taps = np.arange(low, high)
            w = np.clip(1.0 - np.abs((taps - centre + 0.5) * inverse), 0.0, None)
            if w.sum() > 0:
                weights[i, low:high] = w / w.sum()
        return weights.astype(np.float32)
    for i in range(out_size):
        source = max((i + 0.5) * scale - 0.5, 0.0)
        left = min(int(source), in_size - 1)
        right = min(left + 1, in_size - 1)
        fraction = source - left
        weights[i, left] += 1.0 - fraction
        weights[i, right] += fraction
    return weights.astype(np.float32)


def area_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of a 1-D adaptive average pool: output i averages the inputs
    floor(i*in/out) .. ceil((i+1)*in/out) - 1 (PyTorch's ``adaptive_avg_pool2d``, one axis)."""
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = math.ceil((i + 1) * in_size / out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def resize_bilinear(array: np.ndarray, size: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """(H,W) -> (h,w) float32, bilinear (``antialias``: averaged when shrinking); unchanged size is a copy."""
    array = np.asarray(array, dtype=np.float32)
    height, width = array.shape
    if (height, width) == tuple(size):
        return array.copy()
    rows = bilinear_weights(height, size[0], antialias)
    columns = bilinear_weights(width, size[1], antialias)
    return rows @ array @ columns.T


def area_pool(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(M,H,W) -> (M,h,w) float32: each map averaged over the cells of an adaptive (h,w) grid."""
    masks = np.asarray(masks, dtype=np.float32)
    if masks.shape[-2:] == tuple(size):
        return masks
    rows = area_weights(masks.shape[-2], size[0])
    columns = area_weights(masks.shape[-1], size[1])
    return rows @ masks @ columns.T
