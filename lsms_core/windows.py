"""Display window presets (centre / width in HU), as data: the widget lists them, annotations record
the one used. Values are the common radiology defaults (e.g. Radiopaedia's "windowing (CT)"). And the
windowing step of the model's input (``to_unit_grey``), here because it needs no PyTorch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .config import PreprocessConfig
from .pixels import check_slice


def window_limits(center: float, width: float) -> tuple[float, float]:
    """(low, high) of the window ``center +- width/2``: the one place this is computed (display
    contrast, model input, PNG export)."""
    half = width / 2.0
    return center - half, center + half


def percentile_limits(image: np.ndarray, percentiles: tuple[float, float] = PreprocessConfig.percentiles
                      ) -> tuple[float, float]:
    """(low, high) at the image's own ``percentiles``: the range of images without physical units
    (X-ray, MR, PNG) for the model input, the initial display contrast and PNG export."""
    low, high = np.percentile(image, percentiles)
    return float(low), float(high)


def intensity_range(image: np.ndarray, config: PreprocessConfig, hounsfield: bool) -> tuple[float, float]:
    """(low, high) mapped to 0 and 1: the CT window in HU, else the image's own percentiles."""
    if hounsfield:
        return window_limits(config.window_center, config.window_width)
    return percentile_limits(image, config.percentiles)


def to_unit_grey(image: np.ndarray, config: PreprocessConfig, hounsfield: bool) -> np.ndarray:
    """Raw slice (H,W) -> windowed grey (H,W) float32 in [0,1] at the image's own size: the
    intensity step of ``to_model_input`` (CT window in HU, else the image's own percentiles)."""
    array = check_slice(image)
    low, high = intensity_range(array, config, hounsfield)
    scale = 1.0 / (high - low) if high > low else 0.0
    return np.clip((array - low) * scale, 0.0, 1.0).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Window:
    name: str
    center: float
    width: float

    @property
    def limits(self) -> tuple[float, float]:
        """(low, high) for napari's contrast_limits."""
        return window_limits(self.center, self.width)

    def to_record(self) -> dict:
        return asdict(self)


WINDOW_PRESETS: dict[str, Window] = {w.name: w for w in (
    Window("soft tissue", PreprocessConfig.window_center, PreprocessConfig.window_width),
    Window("liver", 60.0, 160.0),
    Window("lung", -600.0, 1500.0),
    Window("bone", 400.0, 1800.0),
    Window("brain", 40.0, 80.0),
)}
# The soft-tissue window L50/W400: PreprocessConfig's defaults, i.e. the default model's input window.
DEFAULT_WINDOW = WINDOW_PRESETS["soft tissue"]


def window_from_limits(low: float, high: float, name: str = "custom") -> Window:
    """The window matching napari contrast limits (what the user actually looked at)."""
    return Window(name, (low + high) / 2.0, max(high - low, 1e-6))
