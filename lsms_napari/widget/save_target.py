"""What a Labels layer is saved as: its image slice, its words, and whether a model proposed it.

A layer made by Segment carries its proposal (the text, fields and model of that run); a layer made by
clicks or boxes alone carries one without words, which come from the Expression box. A layer the
user drew (no proposal) belongs to its ``lsms_source`` image when it names one, else to the image
picked under "Image", on the displayed slice; its words are those of the Expression box (or the
sentence the structured fields compose), and its provenance says it was hand-drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels

from lsms_core.expressions import ExpressionError

from . import expression as ex
from .image_picker import ImagePicker
from .saving import Annotation
from .session import Proposals, pixels_sha

NO_WORDS = ("type the expression this mask answers in the Expression box (e.g. 'the lesion the model "
            "missed in segment VI'), or fill the structured fields, then save again")


@dataclass
class SaveTarget:
    """An annotation ready to save: ``pixels`` (H,W) of ``source`` at ``annotation.slice_index``."""

    annotation: Annotation
    source: Image
    pixels: np.ndarray
    fields_dropped: bool = False  # typed words that are not the fields' sentence: the fields were left out


def mask_of(labels: Labels, slice_index: int | None) -> np.ndarray:
    """The layer's mask on the slice, (H,W) bool (any label > 0)."""
    return np.asarray(labels.data if slice_index is None else labels.data[slice_index]) > 0


def hand_drawn_image(labels: Labels, images: ImagePicker) -> tuple[Image, np.ndarray, int | None]:
    """(image layer, its displayed slice (H,W), slice index or None) a hand-drawn layer lies on.
    ValueError, saying what to do, when no open image fits it."""
    name = labels.metadata.get("lsms_source")
    source = images.source_layer(name) if name else images.image_layer()
    if source is None:
        raise ValueError("open the image this mask was drawn on and pick it under Image")
    if tuple(labels.data.shape) != tuple(source.data.shape):
        shape = lambda data: "x".join(map(str, data.shape))  # noqa: E731
        raise ValueError(f'the Labels layer "{labels.name}" is {shape(labels.data)} but the image "{source.name}" is '
                         f"{shape(source.data)}: pick the image it was drawn on under Image")
    pixels, index = images.current_slice(source)
    return source, pixels, index


def save_target(labels: Labels, proposals: Proposals, images: ImagePicker, typed: str, fields: dict) -> SaveTarget:
    """The annotation ``labels`` becomes; ValueError (or ExpressionError) with what to do when none can."""
    key = labels.metadata.get("lsms_proposal")
    proposal = proposals.get(key)
    if proposal is not None:
        source = images.source_layer(proposal.request.source_layer)
        if source is None:
            raise ValueError(f'the image "{proposal.request.source_layer}" is closed: nothing to attach the mask to')
        index = proposal.request.slice_index
        pixels = np.asarray(source.data if index is None else source.data[index])
        annotation = Annotation.from_proposal(proposal)
        if proposal.request.text:
            return SaveTarget(annotation, source, pixels)
        text, attributes, dropped = typed_words(typed, fields)  # clicks and boxes alone: the words are typed
        annotation.text, annotation.attributes, annotation.kinds = text, attributes, ex.expression_kinds(attributes)
        return SaveTarget(annotation, source, pixels, dropped)
    if key is not None:
        raise ValueError(f'the proposal behind "{labels.name}" is no longer kept (the widget keeps those of the '
                         "layers last used): press Segment again to save it with its proposal")
    source, pixels, index = hand_drawn_image(labels, images)
    text, attributes, dropped = typed_words(typed, fields)
    annotation = Annotation(text, attributes, ex.expression_kinds(attributes), index, pixels_sha(pixels))
    return SaveTarget(annotation, source, np.asarray(pixels), dropped)


def typed_words(typed: str, fields: dict) -> tuple[str, dict, bool]:
    """The Expression box's words (text, attributes, fields dropped) for a mask drawn without them
    (ExpressionError NO_WORDS when empty)."""
    try:
        return ex.text_and_attributes(typed, fields)
    except ExpressionError as error:
        if str(error) == ex.EMPTY_EXPRESSION:
            raise ExpressionError(NO_WORDS) from None
        raise
