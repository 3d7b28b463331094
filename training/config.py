"""The training recipe: the paper's by default (section IV-C), every value overridable."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults: AdamW lr 3e-5, wd 0.01 (none on norms), poly 0.9 per
    iteration, no warm-up, 100 epochs, batch 16, 480x480, focal + weighted dice + 0.125 x
    contrastive, no augmentation."""

    dataset: str
    output: str
    preset: str = "lsms"
    use_text: bool = True
    image_size: int = 480
    epochs: int = 100
    batch_size: int = 16
    lr: float = 3e-5
    weight_decay: float = 0.01
    poly_power: float = 0.9
    warmup_iters: int = 0
    contrastive_weight: float = 0.125
    boundary_weight: float = 1.2
    temperature: float = 0.1
    text_encoder: str | None = None  # None: the offline default (all-MiniLM-L6-v2)
    text_encoder_name: str | None = None
    max_tokens: int = 40
    train_text_layers: tuple[int, ...] = ()
    text_lr: float | None = None  # learning rate of trained text layers (default: lr)
    augment: bool = False
    init_mscan: str | None = None  # SegNeXt MSCAN ImageNet weights to start the encoder from
    window_center: float = 50.0
    window_width: float = 400.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16/fp16 autocast on CUDA (never on CPU)
    channels_last: bool = False
    val_split: str = "val"
    train_split: str = "train"
    save_every_steps: int = 0  # also save the resumable state every N iterations (0: per epoch only)
    model_name: str = "lsms"
    half_checkpoints: bool = False  # store best/last weights in fp16

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known})

    def differences(self, other: "TrainConfig", ignore: tuple[str, ...] = ("device",)) -> dict:
        """Fields (other than ``ignore``) whose values differ: what a resume will not apply."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}
