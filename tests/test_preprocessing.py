"""One preprocessing path: window/percentiles, 3 channels, resize, normalise; logits back to a mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsms_core.config import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from lsms_core.preprocessing import ImageError, to_model_input, to_model_target, to_output_mask


def _denormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def test_ct_window_maps_hu_to_unit_range():
    config = PreprocessConfig(image_size=32, window_center=40, window_width=400)
    hu = np.full((32, 32), -1000.0, np.float32)
    hu[:, 16:] = 1000.0
    hu[0, 0] = 40.0  # window centre -> 0.5
    grey = _denormalise(to_model_input(hu, config, hounsfield=True))
    assert grey.shape == (3, 32, 32)
    torch.testing.assert_close(grey[0], grey[2])  # grey replicated to 3 channels
    assert grey[0, 5, 5].item() == pytest.approx(0.0, abs=1e-6)
    assert grey[0, 5, 20].item() == pytest.approx(1.0, abs=1e-6)
    assert grey[0, 0, 0].item() == pytest.approx(0.5, abs=1e-6)


def test_non_ct_is_scaled_by_its_own_percentiles(rng):
    config = PreprocessConfig(image_size=64)
    raw = rng.uniform(1000, 3000, size=(64, 64)).astype(np.float32)
    a = to_model_input(raw, config, hounsfield=False)
    b = to_model_input(raw * 7 + 100, config, hounsfield=False)  # same picture, other units
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_resize_to_model_size_and_back():
    config = PreprocessConfig(image_size=64)
    image = np.zeros((100, 150), np.float32)
    assert to_model_input(image, config, hounsfield=True).shape == (3, 64, 64)
    logits = torch.full((1, 64, 64), -5.0)
    logits[:, 16:48, 16:48] = 5.0
    mask, prob = to_output_mask(logits, (100, 150))
    assert mask.shape == prob.shape == (100, 150)
    assert mask.dtype == bool and prob.dtype == np.float32
    rows, cols = np.nonzero(mask)
    assert 20 <= rows.min() <= 30 and 70 <= rows.max() <= 80  # the box scaled by 100/64
    assert 30 <= cols.min() <= 42 and 105 <= cols.max() <= 118  # and by 150/64


def test_target_resize_stays_binary():
    mask = np.zeros((100, 100), bool)
    mask[10:60, 10:60] = True
    target = to_model_target(mask, 32)
    assert target.shape == (1, 32, 32)
    assert set(target.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("bad,message", [
    (np.zeros((2, 3, 4)), "one 2-D slice"),
    (np.zeros((0, 5)), "empty"),
    (np.array([[1.0, np.nan], [0, 1]]), "NaN"),
    (np.array([[1.0, np.inf], [0, 1]]), "NaN or infinite"),
    (np.array([["a", "b"]]), "not a real number"),
])
def test_bad_pixels_get_a_clear_error(bad, message):
    with pytest.raises(ImageError, match=message):
        to_model_input(bad, PreprocessConfig(image_size=32), hounsfield=True)


def test_constant_image_does_not_divide_by_zero():
    x = to_model_input(np.full((10, 10), 5.0), PreprocessConfig(image_size=32), hounsfield=False)
    assert torch.isfinite(x).all()


# --- issue 15: one owner for intensity handling ----------------------------------------------

def _to_model_input_before(image, config, hounsfield):
    """to_model_input as it was before it was split into to_unit_grey -> resize_grey -> normalise."""
    import torch.nn.functional as F

    from lsms_core.preprocessing import check_slice

    array = check_slice(image)
    if hounsfield:
        half = config.window_width / 2.0
        low, high = config.window_center - half, config.window_center + half
    else:
        low, high = (float(v) for v in np.percentile(array, config.percentiles))
    scale = 1.0 / (high - low) if high > low else 0.0
    grey = torch.from_numpy(np.clip((array - low) * scale, 0.0, 1.0))[None, None]
    size = config.image_size
    if grey.shape[-2:] != (size, size):
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(config.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(config.std, dtype=torch.float32)[:, None, None]
    return (grey[0].expand(3, -1, -1) - mean) / std


@pytest.mark.parametrize("name,size", [("693_UNCI.dcm", 512), ("693_UNCI.dcm", 256), ("693_UNCI.dcm", 1024),
                                       ("RG1_UNCI.dcm", 384)])
def test_to_model_input_is_unchanged_by_the_split(name, size):
    from pydicom.data import get_testdata_file

    from lsms_core.image_io import read_slice

    image = read_slice(get_testdata_file(name))
    config = PreprocessConfig(image_size=size)
    after = to_model_input(image.pixels, config, image.hounsfield)
    torch.testing.assert_close(after, _to_model_input_before(image.pixels, config, image.hounsfield),
                               atol=1e-6, rtol=0)


def test_normalise_takes_one_sample_or_a_batch():
    from lsms_core.preprocessing import normalise

    config = PreprocessConfig(image_size=32)
    grey = torch.rand(4, 1, 32, 32)
    batch = normalise(grey, config)
    assert batch.shape == (4, 3, 32, 32)
    torch.testing.assert_close(normalise(grey[2], config), batch[2])


def test_windows_own_the_window_arithmetic():
    """The default window is PreprocessConfig's, and every (low, high) comes from window_limits."""
    from lsms_core.preprocessing import intensity_range
    from lsms_core.windows import DEFAULT_WINDOW, WINDOW_PRESETS, window_limits

    config = PreprocessConfig()
    assert (DEFAULT_WINDOW.center, DEFAULT_WINDOW.width) == (config.window_center, config.window_width)
    assert intensity_range(np.zeros((4, 4)), config, True) == window_limits(50.0, 400.0) == (-150.0, 250.0)
    assert WINDOW_PRESETS["lung"].limits == window_limits(-600.0, 1500.0)


def test_training_batches_are_unchanged(mini_dataset):
    """ReferringSamples caches to_unit_grey + resize_grey; its batches, once normalised, equal what
    to_model_input gives (before: cached by un-normalising to_model_input's output)."""
    from lsms_core.dataset import AnnotationDataset
    from training.data import ReferringSamples, collate, grey_from_model_input, normalise

    prep = PreprocessConfig(image_size=128)
    samples = ReferringSamples(AnnotationDataset.open(mini_dataset), "train", prep)
    batch = collate([samples[i] for i in range(6)])
    dataset = samples.dataset
    expected_input = torch.stack([to_model_input(dataset.read_image(samples.records[i]), prep, True)
                                  for i in range(6)])
    expected_grey = torch.stack([grey_from_model_input(x, prep) for x in expected_input])
    torch.testing.assert_close(batch["grey"], expected_grey, atol=1e-6, rtol=0)
    torch.testing.assert_close(normalise(batch["grey"], prep), expected_input, atol=1e-6, rtol=0)
