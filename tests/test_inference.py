"""The warm inference API: load once, segment many times, cache text, fall back from CUDA OOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from lsms_core.image_io import read_slice
from lsms_core.inference import ExpressionError, Segmenter, clean_expression


def test_segment_returns_mask_at_the_image_size(tiny_checkpoint):
    segmenter = Segmenter(tiny_checkpoint, device="auto")
    assert segmenter.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    image = read_slice(get_testdata_file("693_UNCI.dcm"))
    result = segmenter.segment(image, "the largest hypodense lesion")
    assert result.mask.shape == result.probability.shape == (512, 512)
    assert result.mask.dtype == bool
    assert 0.0 <= result.probability.min() <= result.probability.max() <= 1.0
    assert np.array_equal(result.mask, result.probability > 0.5)
    assert result.model["name"] == "tiny-test"


def test_text_features_are_cached_per_expression(tiny_checkpoint, lits):
    segmenter = Segmenter(tiny_checkpoint, device="cpu")
    for _ in range(3):
        segmenter.segment(lits.hu[60], "the largest lesion", hounsfield=True)
    assert segmenter.text_encodings == 1
    segmenter.segment(lits.hu[60], "  the   largest lesion ", hounsfield=True)  # same after normalising
    assert segmenter.text_encodings == 1
    segmenter.segment(lits.hu[60], "the smallest lesion", hounsfield=True)
    assert segmenter.text_encodings == 2


def test_expression_changes_the_result(tiny_checkpoint, lits):
    segmenter = Segmenter(tiny_checkpoint, device="cpu")
    a = segmenter.segment(lits.hu[60], "the largest lesion", hounsfield=True).probability
    b = segmenter.segment(lits.hu[60], "the smallest cyst near the dome", hounsfield=True).probability
    assert not np.allclose(a, b)


@pytest.mark.parametrize("text", ["", "   \n\t "])  # long ones are cut, not refused: test_bad_inputs
def test_bad_expressions_are_refused(text):
    with pytest.raises(ExpressionError):
        clean_expression(text)


def test_non_latin_text_is_accepted(tiny_checkpoint, lits):
    result = Segmenter(tiny_checkpoint, device="cpu").segment(lits.hu[60], "肝右叶最大的低密度病灶", hounsfield=True)
    assert result.mask.shape == (128, 128)


def test_arrays_need_their_units(tiny_checkpoint, lits):
    with pytest.raises(ValueError, match="Hounsfield"):
        Segmenter(tiny_checkpoint, device="cpu").segment(lits.hu[60], "a lesion")


def test_cuda_out_of_memory_falls_back_to_cpu(tiny_checkpoint, lits, monkeypatch):
    segmenter = Segmenter(tiny_checkpoint, device="cpu")
    segmenter._device = torch.device("cuda")  # pretend the model lives on a GPU that runs out of memory
    real_run = segmenter._run
    calls = []

    def run(model_input, text):
        calls.append(str(segmenter.device))
        if segmenter.device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(model_input, text)

    monkeypatch.setattr(segmenter, "_run", run)
    with pytest.warns(UserWarning, match="out of memory"):
        result = segmenter.segment(lits.hu[60], "the largest lesion", hounsfield=True)
    assert calls == ["cuda", "cpu"]
    assert result.device == "cpu" and result.notes
    assert result.mask.shape == (128, 128)
    assert segmenter.device.type == "cpu"  # later calls stay on the CPU


def test_requesting_missing_cuda_is_a_clear_error(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(RuntimeError, match="no CUDA"):
        Segmenter(tiny_checkpoint, device="cuda")


def test_text_encoder_of_another_size_is_refused(tmp_path, tiny_config):
    from lsms_core.checkpoint import save_checkpoint
    from lsms_core.config import preset
    from lsms_core.model import build_model

    config = tiny_config.replace(model=preset("lsms-tiny", text_dim=768))
    path = save_checkpoint(tmp_path / "bert768.safetensors", build_model(config.model), config)
    with pytest.raises(ValueError, match="hidden size 384"):
        Segmenter(path, device="cpu")
