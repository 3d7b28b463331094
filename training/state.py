"""The resumable training state, in safetensors (no pickles): optimiser moments, RNG states,
counters and the run's config. Written atomically next to ``last.safetensors``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lsms_core.atomic import atomic_write_bytes

STATE_FILE = "train_state.safetensors"


@dataclass
class Progress:
    """Where a run is: ``epoch`` in progress, batches done in it, iterations done in total."""

    epoch: int = 0
    step_in_epoch: int = 0
    iteration: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


def save_state(directory: Path, optimizer: torch.optim.Optimizer, progress: Progress, config_json: str,
               scaler: torch.amp.GradScaler | None = None,
               weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the state; ``weights`` (e.g. ``model.*``) go in the same file, so weights and
    optimiser state can never come from two different moments."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {"rng.cpu": torch.get_rng_state()}
    for name, value in (weights or {}).items():
        tensors[name] = value.detach().cpu().contiguous()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda{i}"] = state
    opt_state = optimizer.state_dict()
    for index, values in opt_state["state"].items():
        for name, value in values.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"opt.{index}.{name}"] = tensor.detach().cpu().contiguous()
    metadata = {"progress": json.dumps(progress.__dict__), "config": config_json,
                "param_groups": json.dumps(opt_state["param_groups"]),
                "scaler": json.dumps(scaler.state_dict() if scaler is not None else None)}
    path = directory / STATE_FILE
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


class StateError(ValueError):
    """The saved training state cannot be resumed from; the message says why and what to do."""


_STATE_KEYS = ("progress", "config", "param_groups")


def read_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of the saved state. StateError when the file is damaged (a copy cut short, a
    disk that filled up): safetensors' own error, or metadata missing what a resume needs."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = directory / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume in {directory}: {STATE_FILE} is missing")
    advice = ("resume from an intact copy, or start again with --overwrite (last.safetensors and best.safetensors "
              "hold the weights)")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # safetensors_rust.SafetensorError, ValueError on a header that is not JSON, ...
        size = path.stat().st_size
        raise StateError(f"{path}: the saved state is damaged (truncated?): {' '.join(str(exc).split())} "
                         f"({size:,} bytes); {advice}") from None
    missing = [key for key in _STATE_KEYS if key not in (metadata or {})]
    if missing:
        raise StateError(f"{path}: the saved state is damaged: its metadata lacks {missing}; {advice}")
    for key in _STATE_KEYS:
        try:
            json.loads(metadata[key])
        except ValueError as exc:
            raise StateError(f"{path}: the saved state is damaged: its {key!r} is not valid JSON ({exc}); "
                             f"{advice}") from None
    return tensors, metadata


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored state tensor its parameter's strides. The state is saved contiguous, while a
    channels_last model's 4-D weights are NHWC; the fused AdamW kernel pairs elements by memory position, so
    a state in another layout than its parameter silently corrupts every update (torch 2.13)."""
    for parameter, values in optimizer.state.items():
        for name, value in values.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                values[name] = torch.empty_like(parameter).copy_(value)


def restore_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str], optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None = None) -> Progress:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = json.loads(metadata["param_groups"])
    device = optimizer.param_groups[0]["params"][0].device
    for index, values in state.items():
        for name, value in values.items():
            values[name] = value if name == "step" else value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    _match_parameter_layouts(optimizer)
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    scaler_state = json.loads(metadata.get("scaler", "null"))
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    return Progress(**json.loads(metadata["progress"]))
