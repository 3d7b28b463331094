"""What the plugin knows about an image layer, kept in ``layer.metadata["lsms"]``; the layers a read
volume becomes (its image, and the outlines drawn in the file as Labels).

The reader and the sample data fill it; images opened by napari's own readers (PNG, TIFF) have
none, and count as raw values of unknown spacing. Only pseudonymous keys are stored, never
patient identifiers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from lsms_core.dicom import Volume
from lsms_core.windows import DEFAULT_WINDOW, percentile_limits, window_limits

KEY = "lsms"


@dataclass
class SourceInfo:
    hounsfield: bool = False
    modality: str = "OT"
    spacing_mm: tuple[float, float] | None = None
    window: tuple[float, float] | None = None  # the file's own (centre, width)
    patient_key: str | None = None
    sop_instance_uids: list[str | None] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    description: str = ""
    body_part: str = ""  # DICOM BodyPartExamined ("" when unknown)
    slice_spacing_mm: float | None = None  # distance between a stack's slices (from positions), None when unknown
    affine: list | None = None  # Volume.affine as nested lists: voxel (z, row, column, 1) -> LPS mm (export)

    def to_metadata(self) -> dict:
        return {KEY: asdict(self)}

    @classmethod
    def of(cls, layer) -> "SourceInfo":
        raw = (getattr(layer, "metadata", None) or {}).get(KEY)
        if not raw:
            return cls()
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        info = cls(**known)
        info.spacing_mm = tuple(info.spacing_mm) if info.spacing_mm else None
        info.window = tuple(info.window) if info.window else None
        return info


def contrast_limits(pixels: np.ndarray, window: tuple[float, float] | None, hounsfield: bool) -> tuple[float, float]:
    """Initial display contrast: the file's window, else soft tissue for CT, else the image's own
    percentiles (the model input's: lsms_core.windows owns all three)."""
    if window is not None:
        return window_limits(*window)
    if hounsfield:
        return DEFAULT_WINDOW.limits
    low, high = percentile_limits(pixels)
    return low, float(max(high, low + 1e-6))


def volume_layer_data(volume: Volume, name: str) -> tuple[np.ndarray, dict, str]:
    """napari LayerData for a read volume: 2-D for one slice, 3-D (Z,H,W) for a stack."""
    data = volume.pixels[0] if len(volume.pixels) == 1 else volume.pixels
    row, col = volume.spacing_mm or (1.0, 1.0)
    scale = (row, col) if data.ndim == 2 else (volume.slice_spacing_mm or 1.0, row, col)
    info = SourceInfo(volume.hounsfield, volume.modality, volume.spacing_mm, volume.window, volume.patient_key,
                      list(volume.sop_instance_uids), [str(f) for f in volume.files], body_part=volume.body_part,
                      slice_spacing_mm=volume.slice_spacing_mm if data.ndim == 3 else None,
                      affine=None if volume.affine is None else np.asarray(volume.affine, float).tolist())
    kwargs = {"name": name, "scale": scale, "colormap": "gray", "metadata": info.to_metadata(),
              "contrast_limits": contrast_limits(volume.pixels, volume.window, volume.hounsfield)}
    return data, kwargs, "image"


DRAWN_IN_FILE = "drawn in the file"


def drawn_layer_data(volume: Volume, image_name: str) -> list[tuple[np.ndarray, dict, str]]:
    """napari LayerData, one Labels layer per DICOM overlay plane holding closed outlines (filled;
    lsms_core.overlays): named "<image>: drawn in the file", the image's shape and scale, tied to the image
    (``metadata["lsms_source"]``) so that Save annotation saves it as a hand-drawn mask on that image."""
    layers = []
    shape = volume.pixels.shape[1:] if len(volume.pixels) == 1 else volume.pixels.shape
    row, col = volume.spacing_mm or (1.0, 1.0)
    scale = (row, col) if len(shape) == 2 else (volume.slice_spacing_mm or 1.0, row, col)
    for group in sorted({overlay.group for _, overlay in volume.drawn}):
        data = np.zeros(shape, np.uint8)
        kept = left_out = 0
        for index, overlay in volume.drawn:
            if overlay.group == group:
                (data if len(shape) == 2 else data[index])[overlay.mask] = 1
                kept, left_out = kept + overlay.outlines, left_out + overlay.left_out
        name = f"{image_name}: {DRAWN_IN_FILE}" + (f" (overlay {group:04X})" if group != 0x6000 else "")
        metadata = {"lsms_source": image_name, "lsms_overlay": {"group": f"{group:04X}", "outlines": kept,
                                                                 "left_out": left_out}}
        layers.append((data, {"name": name, "scale": scale, "metadata": metadata, "opacity": 0.5}, "labels"))
    return layers
