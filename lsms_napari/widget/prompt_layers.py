"""The layers the user prompts on: a Points layer of clicks and a Shapes layer of boxes per image.

Both have the image's shape, scale and translate, so their data coordinates are the image's pixel
coordinates ((row, column), with the slice first for a stack) and the clicks need no conversion.
Each click's sign is the Points feature ``positive`` (True for a positive click, drawn green; False for
a negative one, drawn red).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Points, Shapes

from lsms_core.prompt.combine import Click

CLICKS_SUFFIX = ": clicks"
BOXES_SUFFIX = ": boxes"
POSITIVE_COLOUR, NEGATIVE_COLOUR = "lime", "red"
SOURCE_KEY = "lsms_prompts_for"  # metadata: the image layer the prompt layer belongs to


def _find(viewer, image: Image, kind: type, role: str):
    for layer in viewer.layers:
        if isinstance(layer, kind) and layer.metadata.get(SOURCE_KEY) == image.name and \
                layer.metadata.get("lsms_role") == role:
            return layer
    return None


def clicks_layer(viewer, image: Image, create: bool = True) -> Points | None:
    """The image's Points layer of clicks (created, empty, when ``create`` and there is none)."""
    layer = _find(viewer, image, Points, "clicks")
    if layer is None and create:
        size = max(3.0, max(image.data.shape[-2:]) / 64)  # a dot the same on-screen size for any matrix
        layer = viewer.add_points(
            np.empty((0, image.data.ndim)), ndim=image.data.ndim, name=image.name + CLICKS_SUFFIX,
            scale=image.scale, translate=image.translate, size=size, face_color=POSITIVE_COLOUR,
            border_color="white", features={"positive": np.zeros(0, dtype=bool)},
            metadata={SOURCE_KEY: image.name, "lsms_role": "clicks"})
        layer.feature_defaults["positive"] = True
    return layer


def boxes_layer(viewer, image: Image, create: bool = True) -> Shapes | None:
    """The image's Shapes layer of box prompts (created, empty, when ``create`` and there is none)."""
    layer = _find(viewer, image, Shapes, "boxes")
    if layer is None and create:
        layer = viewer.add_shapes(ndim=image.data.ndim, name=image.name + BOXES_SUFFIX, scale=image.scale,
                                  translate=image.translate, edge_color="yellow", face_color="transparent",
                                  edge_width=max(0.5, max(image.data.shape[-2:]) / 256),
                                  metadata={SOURCE_KEY: image.name, "lsms_role": "boxes"})
    return layer


def set_click_sign(layer: Points, positive: bool) -> None:
    """Make the next clicks positive or negative (their colour too). The points already placed keep
    theirs: the selection is cleared first, since napari recolours the selected points."""
    layer.selected_data = set()
    layer.feature_defaults["positive"] = bool(positive)
    layer.current_face_color = POSITIVE_COLOUR if positive else NEGATIVE_COLOUR


def _on_slice(coordinates: np.ndarray, slice_index: int | None) -> np.ndarray:
    """(N,) bool: which (N, D) coordinates lie on the slice (all for a 2-D layer)."""
    if slice_index is None or coordinates.shape[1] == 2:
        return np.ones(len(coordinates), dtype=bool)
    return np.round(coordinates[:, 0]).astype(int) == slice_index


def clicks_on_slice(layer: Points | None, slice_index: int | None) -> list[Click]:
    """The layer's clicks on the slice as image pixels (x = column, y = row)."""
    if layer is None or not len(layer.data):
        return []
    data = np.asarray(layer.data, dtype=float)
    signs = layer.features["positive"].to_numpy(dtype=bool) if "positive" in layer.features else \
        np.ones(len(data), dtype=bool)
    keep = _on_slice(data, slice_index)
    return [Click(float(point[-1]), float(point[-2]), bool(sign)) for point, sign in zip(data[keep], signs[keep])]


def boxes_on_slice(layer: Shapes | None, slice_index: int | None) -> list[tuple[float, float, float, float]]:
    """The layer's rectangles on the slice as (x0, y0, x1, y1) image pixels (other shapes: their
    bounding box)."""
    if layer is None:
        return []
    boxes = []
    for vertices in layer.data:
        vertices = np.asarray(vertices, dtype=float)
        if not _on_slice(vertices, slice_index).all():
            continue
        rows, cols = vertices[:, -2], vertices[:, -1]
        boxes.append((float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())))
    return boxes


def clear_slice(points: Points | None, shapes: Shapes | None, slice_index: int | None) -> None:
    """Remove the clicks and boxes on the slice (those on other slices of a stack stay)."""
    if points is not None and len(points.data):
        keep = ~_on_slice(np.asarray(points.data, dtype=float), slice_index)
        points.selected_data = set(np.flatnonzero(~keep).tolist())
        points.remove_selected()
    if shapes is not None and len(shapes.data):
        on = [i for i, v in enumerate(shapes.data) if _on_slice(np.asarray(v, dtype=float), slice_index).all()]
        if on:
            shapes.selected_data = set(on)
            shapes.remove_selected()
