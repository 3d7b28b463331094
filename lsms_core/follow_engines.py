"""The proposers ``lsms_core.follow.follow_lesion`` asks for each neighbouring slice's lesion parts.

- ``lesions``: the lesions LSMS finds on the slice ("all lesions": the default model's candidates,
  or a plain model's mask for that text); the follower keeps the one that continues the lesion.
  Where the words named the lesion on the seed slice, the overlap names it on the next: "the
  largest lesion" may be another lesion two slices on.
- ``words``: LSMS with the user's expression on every slice (the words must still single the lesion
  out on each slice).
- ``box``: the prompt model (LiteMedSAM) with the previous slice's mask as a box prompt, grown by
  ``margin_px``; it always draws something in the box, so it stops only where its outline loses the
  previous slice.

``benchmarks/follow_lits.py`` measures them against the LiTS volume's 3-D tumours (docs/volumes.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .follow import Proposer, SliceProposal
from .selection import ALL_LESIONS_TEXT

if TYPE_CHECKING:
    from .inference import Segmenter
    from .prompt.prompt_model import PromptSegmenter

ENGINES = ("lesions", "words", "box")
DEFAULT_ENGINE = "lesions"
LESION_THRESHOLD = 0.5  # the finder's probability that makes a lesion part on a neighbouring slice
BOX_MARGIN_PX = 3.0  # the previous mask's box grown by this much: a lesion grows a little between slices


def lesion_proposer(segmenter: "Segmenter", volume: np.ndarray, hounsfield: bool,
                    threshold: float = LESION_THRESHOLD) -> Proposer:
    """The lesions LSMS finds on slice z of ``volume`` (Z,H,W) (HU when ``hounsfield``): its "all lesions"
    probability >= ``threshold``."""
    from .preprocessing import to_model_input

    def propose(z: int, previous: np.ndarray) -> SliceProposal:
        pixels = volume[z]
        if segmenter.model.selector is None:
            result = segmenter.segment(pixels, ALL_LESIONS_TEXT, hounsfield=hounsfield, threshold=threshold)
            return SliceProposal(result.mask, result.probability)
        model_input = to_model_input(pixels, segmenter.checkpoint.config.preprocess, hounsfield)
        found = segmenter.candidates(model_input, pixels, hounsfield)
        return SliceProposal(found.probability >= threshold, found.probability)

    return propose


def words_proposer(segmenter: "Segmenter", volume: np.ndarray, hounsfield: bool, text: str,
                   threshold: float = 0.5) -> Proposer:
    """LSMS's mask for ``text`` on slice z of ``volume`` (Z,H,W)."""

    def propose(z: int, previous: np.ndarray) -> SliceProposal:
        result = segmenter.segment(volume[z], text, hounsfield=hounsfield, threshold=threshold)
        return SliceProposal(result.mask, result.probability)

    return propose


def box_proposer(prompt_segmenter: "PromptSegmenter", volume: np.ndarray, hounsfield: bool,
                 window: tuple[float, float] | None = None, margin_px: float = BOX_MARGIN_PX,
                 threshold: float = 0.5) -> Proposer:
    """The prompt model's outline inside the previous slice's mask box (grown by ``margin_px``)
    on slice z of ``volume`` (Z,H,W); ``window`` (centre, width) in HU as for ``set_image``."""
    from .prompt.prompts import box_of, grown_box

    def propose(z: int, previous: np.ndarray) -> SliceProposal:
        prompt_segmenter.set_image(volume[z], hounsfield=hounsfield, window=window)
        box = grown_box(box_of(previous), margin_px, previous.shape)
        mask, probability = prompt_segmenter.predict(box=box, threshold=threshold)
        return SliceProposal(mask, probability)

    return propose


def make_proposer(engine: str, volume: np.ndarray, hounsfield: bool, segmenter: "Segmenter | None" = None,
                  text: str | None = None, prompt_segmenter: "PromptSegmenter | None" = None,
                  window: tuple[float, float] | None = None, threshold: float | None = None) -> Proposer:
    """The proposer of ``engine`` (one of ENGINES) with what it needs; ValueError naming what is missing."""
    if engine not in ENGINES:
        raise ValueError(f"unknown follow engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "box":
        if prompt_segmenter is None:
            raise ValueError("the 'box' engine needs the prompt model (LiteMedSAM)")
        return box_proposer(prompt_segmenter, volume, hounsfield, window)
    if segmenter is None:
        raise ValueError(f"the {engine!r} engine needs an LSMS model")
    if engine == "words":
        if not text:
            raise ValueError("the 'words' engine needs the expression")
        return words_proposer(segmenter, volume, hounsfield, text)
    return lesion_proposer(segmenter, volume, hounsfield, LESION_THRESHOLD if threshold is None else threshold)
