"""The training recipe: the paper's by default (section IV-C), every value overridable."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from lsms_core.config import PreprocessConfig, dataclass_from_dict


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
    # Share of the lines without an instance number (those outlining the slice's findings as a whole, as QaTa's
    # sentences do) whose words are replaced by the neutral text in training, so that lsms-eval --text-mode
    # neutral measures what the words add, not a text the model never saw (the paper's partial-text rows).
    neutral_share: float = 0.0
    vertical_flips: bool = True  # with augment: also upside-down flips (upper<->lower swapped in the text)
    workers: int = 0  # processes that read and augment samples ahead of the model (0: in the training process)
    init_mscan: str | None = None  # SegNeXt MSCAN ImageNet weights to start the encoder from
    window_center: float = PreprocessConfig.window_center
    window_width: float = PreprocessConfig.window_width
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16/fp16 autocast on CUDA (never on CPU)
    # NHWC activations: the same function (tests/test_training.py) and faster on CPU and GPU (docs/benchmarks.md)
    channels_last: bool = True
    val_split: str = "val"
    train_split: str = "train"
    save_every_steps: int = 0  # also save the resumable state every N iterations (0: per epoch only)
    model_name: str = "lsms"
    half_checkpoints: bool = False  # store best/last weights in fp16
    mix: tuple[str, ...] = ()  # more datasets whose train (and val) splits are mixed in
    same_slice: int = 1  # expressions of one slice (different targets) next to each other in a batch
    init_checkpoint: str | None = None  # start from these weights ("default": the shipped model)
    # With init_checkpoint holding a lesion selector that reads geometry only: keep it (frozen) and train
    # the LSMS as its lesion finder ("all lesions" = the union of each slice's masks). False: leave it out.
    keep_selector: bool = True
    expression_kinds: tuple[str, ...] = ()  # train and validate only on expressions of these kinds

    def validate(self) -> "TrainConfig":
        """Refuse settings that cannot train (they would divide by zero or write a NaN model)."""
        import math

        def number(name: str, low: float, high: float, low_open: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < low or value > high or (low_open and value == low):
                bound = f"> {low:g}" if low_open else f">= {low:g}"
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number {bound} and <= {high:g}, "
                                 f"got {value!r}")

        for name, low in (("batch_size", 1), ("epochs", 1), ("same_slice", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")
        number("lr", 0.0, 1.0, low_open=True)
        number("neutral_share", 0.0, 1.0)
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or not 0 <= self.workers <= 64:
            raise ValueError(f"--workers must be a whole number from 0 to 64, got {self.workers!r}")
        number("weight_decay", 0.0, 10.0)
        number("temperature", 0.0, 100.0, low_open=True)
        number("contrastive_weight", 0.0, 100.0)
        number("boundary_weight", 0.0, 100.0)
        number("window_center", -1e5, 1e5)
        number("window_width", 0.0, 65536.0, low_open=True)
        if self.image_size % 32 or not 32 <= self.image_size <= 2048:
            raise ValueError(f"--image-size must be a multiple of 32 in 32..2048, got {self.image_size}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return dataclass_from_dict(cls, json.loads(text), "is this run from a newer lsms-napari?")

    def differences(self, other: "TrainConfig", ignore: tuple[str, ...] = ("device",)) -> dict:
        """Fields (other than ``ignore``) whose values differ: what a resume will not apply."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}
