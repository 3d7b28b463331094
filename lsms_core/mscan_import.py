"""Import SegNeXt MSCAN ImageNet weights (``mscan_t.pth``) into an LSMS encoder.

LSMS keeps MSCAN's module names, so the visual part of every block (stem, down-sampling,
norms, ``attn.spatial_gating_unit.conv*``, MLP) loads by name; the language branch and the
decoder stay freshly initialised. Both the official SegNeXt key names and mmseg's (with a
``backbone.`` prefix, inside ``state_dict``) are accepted. ``.pth`` files are read with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers and
refuses any other object, so no code in the file can run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

_WRAPPERS = ("state_dict", "model", "model_state")
_PREFIXES = ("module.", "backbone.")


@dataclass
class ImportReport:
    """What an import did: keys loaded, keys of the file it skipped, model keys it left alone."""

    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # in the file, no such key in the encoder
    not_covered: list[str] = field(default_factory=list)  # encoder keys the file lacks

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; {len(self.shape_mismatch)} skipped for shape; "
                f"{len(self.unused)} unused file keys; {len(self.not_covered)} encoder tensors kept "
                "at initialisation (language branch and any new layers)")


def read_mscan_state(source: str | os.PathLike | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat MSCAN state dict with official key names from a file or an already loaded dict."""
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises several types for refused or damaged files
                raise ValueError(f"{path}: not a plain tensor checkpoint ({exc}); only weights-only "
                                 "files are accepted") from exc
    for key in _WRAPPERS:
        if isinstance(state.get(key), dict):
            state = state[key]
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def import_mscan(model: nn.Module, source: str | os.PathLike | dict[str, torch.Tensor]) -> ImportReport:
    """Copy matching MSCAN tensors into ``model.backbone``; return what happened."""
    state = read_mscan_state(source)
    target = model.backbone.state_dict()
    report = ImportReport()
    update = {}
    for key, value in state.items():
        if key not in target:
            report.unused.append(key)
        elif target[key].shape != value.shape:
            report.shape_mismatch.append(key)
        else:
            update[key] = value.to(target[key].dtype)
            report.loaded.append(key)
    report.not_covered = sorted(set(target) - set(update))
    model.backbone.load_state_dict(update, strict=False)
    return report
