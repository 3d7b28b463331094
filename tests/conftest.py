"""Shared fixtures: the real LiTS volume, the real text encoder, small checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsms_core.config import LSMSConfig, PreprocessConfig, preset


@pytest.fixture(scope="session")
def lits():
    from lsms_core.lits import load_lits_volume

    return load_lits_volume()


@pytest.fixture(scope="session")
def text_encoder():
    from lsms_core.text_encoder import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def tiny_config() -> LSMSConfig:
    return LSMSConfig(model=preset("lsms-tiny"), preprocess=PreprocessConfig(image_size=128), preset="lsms-tiny")


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_config, text_encoder):
    """A randomly initialised tiny model saved as a real checkpoint."""
    from lsms_core.checkpoint import save_checkpoint
    from lsms_core.model import build_model

    torch.manual_seed(0)
    config = tiny_config.replace(text=text_encoder.config)
    model = build_model(config.model).eval()
    return save_checkpoint(tmp_path / "tiny.safetensors", model, config, extra={"name": "tiny-test"})


@pytest.fixture
def rng():
    return np.random.default_rng(0)
