"""lsms_core.resize: NumPy resizes with PyTorch's weights (the PyTorch-free path's preprocessing and output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsms_core.resize import area_pool, resize_bilinear

SIZES = [((512, 512), (256, 256)), ((128, 128), (256, 256)), ((511, 300), (256, 256)), ((97, 130), (256, 256)),
         ((256, 256), (512, 383)), ((600, 700), (256, 256)), ((256, 256), (256, 256))]


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("source, target", SIZES)
def test_bilinear_resize_is_pytorchs(source, target, antialias):
    image = np.random.default_rng(0).random(source, dtype=np.float32) * 4 - 2
    reference = F.interpolate(torch.from_numpy(image)[None, None], size=target, mode="bilinear",
                              align_corners=False, antialias=antialias)[0, 0].numpy()
    resized = resize_bilinear(image, target, antialias)
    assert resized.shape == target and resized.dtype == np.float32
    np.testing.assert_allclose(resized, reference, atol=1e-4)  # measured: <= 2.4e-7, 9.6e-6 growing to 383


@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_area_pool_is_adaptive_average_pooling(size):
    masks = (np.random.default_rng(1).random((3, 511, 300)) > 0.5).astype(np.float32)
    reference = F.adaptive_avg_pool2d(torch.from_numpy(masks)[:, None], size)[:, 0].numpy()
    np.testing.assert_allclose(area_pool(masks, size), reference, atol=1e-6)
