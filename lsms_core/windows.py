"""Display window presets (centre / width in HU), as data: the widget lists them, annotations record
the one used. Values are the common radiology defaults (e.g. Radiopaedia's "windowing (CT)")."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Window:
    name: str
    center: float
    width: float

    @property
    def limits(self) -> tuple[float, float]:
        """(low, high) for napari's contrast_limits."""
        return self.center - self.width / 2, self.center + self.width / 2

    def to_record(self) -> dict:
        return asdict(self)


WINDOW_PRESETS: dict[str, Window] = {w.name: w for w in (
    Window("soft tissue", 50.0, 400.0),
    Window("liver", 60.0, 160.0),
    Window("lung", -600.0, 1500.0),
    Window("bone", 400.0, 1800.0),
    Window("brain", 40.0, 80.0),
)}
DEFAULT_WINDOW = WINDOW_PRESETS["soft tissue"]  # also the default model's input window


def window_from_limits(low: float, high: float, name: str = "custom") -> Window:
    """The window matching napari contrast limits (what the user actually looked at)."""
    return Window(name, (low + high) / 2.0, max(high - low, 1e-6))
