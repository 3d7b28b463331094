"""Frozen dataclasses from stored JSON, with one rule for keys the class does not have.

The rule (as ``lsms_core.config._from_dict`` for checkpoint configs): an unknown key is an error
naming it, because a file from a newer version must say so rather than load with settings silently
dropped; JSON lists become tuples. Meant for every stored config: the checkpoint's (config.py) and a
training run's (``TrainConfig.from_json``, training/config.py, which still drops unknown keys).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import ConfigError


def dataclass_from_dict(cls: type, raw: Any, newer: str = "is this file from a newer lsms-napari?") -> Any:
    """``cls(**raw)`` with lists turned into tuples; ConfigError when ``raw`` is not a JSON object or
    holds keys ``cls`` has no field for (``newer`` ends that message)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a stored {cls.__name__} must be a JSON object, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)}: {newer}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
