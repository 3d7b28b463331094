"""Clicks and boxes on one slice, alone or on a text result, turned into one mask.

The rules (docs/prompts.md, "Clicks on a text result"):

- On a text result (LSMS's mask for the words, ``base``): a positive click on one of its parts keeps
  that part (the user points at the lesion the words meant: with positive clicks on parts, only
  the clicked parts stay), a negative click on a part drops it.
- A positive click on no part of the base (or with no base) asks the prompt model for the object
  there: each such click is its own prompt (two clicks on two lesions give two lesions), with the
  negative clicks passed along (they drop the prompt model's parts they fall on).
- Each box asks the prompt model for the object in it, with the clicks inside the box.
- The result is the union. Coordinates are image pixels: x the column, y the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .prompts import parts_at

if TYPE_CHECKING:
    from .prompt_model import PromptSegmenter

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Click:
    """One click at image pixel (x, y) = (column, row); ``positive`` False for a negative click."""

    x: float
    y: float
    positive: bool = True

    def pixel(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(row, column) of the click, clipped into an image of ``shape`` (H,W)."""
        return (int(np.clip(round(self.y), 0, shape[0] - 1)), int(np.clip(round(self.x), 0, shape[1] - 1)))


@dataclass
class PromptedMask:
    """The mask (H,W) bool the prompts give, and what made it: how many of the base's parts were kept
    and dropped, how many prompt-model calls (``sam_calls``) ran, and the prompts as a record for
    provenance (``prompts``: clicks as [x, y, 1|0], boxes as [x0, y0, x1, y1])."""

    mask: np.ndarray
    kept_parts: int = 0
    dropped_parts: int = 0
    sam_calls: int = 0
    prompts: dict = field(default_factory=dict)

    @property
    def used_prompt_model(self) -> bool:
        return self.sam_calls > 0


def prompt_record(clicks: list[Click], boxes: list[tuple[float, float, float, float]]) -> dict:
    """The prompts as saved in provenance: pixel coordinates rounded to 0.1 px."""
    return {"clicks": [[round(c.x, 1), round(c.y, 1), int(c.positive)] for c in clicks],
            "boxes": [[round(float(v), 1) for v in box] for box in boxes]}


def _inside(click: Click, box: tuple[float, float, float, float]) -> bool:
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    return x0 <= click.x <= x1 and y0 <= click.y <= y1


def _model_requests(clicks: list[Click], boxes: list, outside: list[Click]) -> list[tuple]:
    """The prompt model's calls as (box or None, clicks): each box with the clicks inside it, and each
    positive click of ``outside`` (on no part of the text result) in no box with the negative clicks."""
    negatives = [click for click in clicks if not click.positive]
    requests = [(box, [click for click in clicks if _inside(click, box)]) for box in boxes]
    requests += [(None, [click] + negatives) for click in outside
                 if click.positive and not any(_inside(click, box) for box in boxes)]
    return requests


def needs_prompt_model(clicks: list[Click], boxes: list, base: np.ndarray | None = None) -> bool:
    """Whether ``prompted_mask`` would call the prompt model for these prompts (on the text result ``base``
    (H,W) bool): a box, or a positive click on none of its parts."""
    shape = None if base is None else base.shape
    outside = list(clicks) if base is None else [click for click in clicks if not base[click.pixel(shape)]]
    return bool(_model_requests(list(clicks), list(boxes), outside))


def prompted_mask(segmenter: "PromptSegmenter | None", shape: tuple[int, int], clicks: list[Click] = (),
                  boxes: list[tuple[float, float, float, float]] = (), base: np.ndarray | None = None
                  ) -> PromptedMask:
    """The mask (H,W) = ``shape`` that ``clicks`` and ``boxes`` give on the segmenter's current slice,
    on the text result ``base`` (H,W) bool when there is one (rules: module docstring). ``segmenter``
    may be None when every click lands on a part of ``base`` and there is no box (nothing needs the
    prompt model); otherwise ValueError."""
    clicks, boxes = list(clicks), [tuple(float(v) for v in box) for box in boxes]
    result = np.zeros(shape, dtype=bool)
    kept = dropped = calls = 0
    outside = clicks
    if base is not None:
        base = np.asarray(base, dtype=bool)
        if base.shape != tuple(shape):
            raise ValueError(f"the text result is {base.shape} but the slice is {tuple(shape)}")
        parts, count = ndimage.label(base, structure=_EIGHT)
        on_part = {click: int(parts[click.pixel(shape)]) for click in clicks}
        chosen = {part for click, part in on_part.items() if part and click.positive}
        refused = {part for click, part in on_part.items() if part and not click.positive}
        keep = (chosen or set(range(1, count + 1))) - refused
        result |= np.isin(parts, sorted(keep)) & (parts > 0)
        kept, dropped = len(keep), count - len(keep)
        outside = [click for click, part in on_part.items() if not part]
    negatives = [click for click in clicks if not click.positive]
    requests = _model_requests(clicks, boxes, outside)
    if requests and segmenter is None:
        raise ValueError("these prompts need the prompt model")
    for box, request_clicks in requests:
        points = [(c.x, c.y) for c in request_clicks] or None
        labels = [int(c.positive) for c in request_clicks] or None
        mask, _ = segmenter.predict(points=points, labels=labels, box=box)
        result |= mask
        calls += 1
    if base is not None and negatives:  # a negative click also removes what a prompt drew over it
        result &= ~parts_at(result, [(c.x, c.y) for c in negatives])
    return PromptedMask(result, kept, dropped, calls, prompt_record(clicks, boxes))
