""""Next match" (Shift-N): the selected Segment result shows the next lesion its words rank.

A model with a lesion selector scores every lesion candidate of the slice against the words; its answer
is the candidates it accepts (lsms_core.selection). When that is the wrong lesion, the one meant is often
the next one the words rank (docs/plugin.md gives how often), so one key press shows it: the answer, then
each candidate alone, best-scored first, and round again. Qt-free: the widget replaces the layer's mask.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .session import LSMS_ENGINE, Proposal


def next_match(proposal: Proposal, shown: np.ndarray) -> Proposal | str:
    """The proposal with its next match, or a message saying why there is none.

    shown: (H,W) bool, what the proposal's layer holds on its slice now: a layer edited since Segment
    keeps its edits (the user is told to Segment again rather than lose them)."""
    if proposal.matches is None:
        return ("this result's model has no lesion selector: it draws one mask for the words, with no next match "
                "(choose the default model, or a model trained with lsms-train-selector)")
    if proposal.engine != LSMS_ENGINE:
        return "clicks or Refine have changed this result: press Segment again to step through the words' matches"
    if not np.array_equal(shown, proposal.mask):
        return ("this layer was edited since Segment; its edits stay. Press Segment again to step through the "
                "words' matches")
    count = len(proposal.matches.choices())
    if count < 2:
        return "no other lesion candidate on this slice: there is no next match"
    position = (proposal.match + 1) % count
    return replace(proposal, mask=proposal.matches.mask(position), match=position, text_mask=None)


def hint(proposal: Proposal) -> str:
    """What Segment's status line says of next matches: where there are some, how to see them."""
    if proposal.matches is None or len(proposal.matches.choices()) < 2:
        return ""
    return " Not the lesion meant? Next match (Shift-N) shows the one the words rank next."


def describe(proposal: Proposal) -> str:
    """The status line for the match a proposal shows."""
    matches = proposal.matches
    count = len(matches.choices())
    what = ("the words' answer" if proposal.match == 0
            else f"the lesion the words rank next (score {matches.logit(proposal.match):.1f})")
    found = f"{int(proposal.mask.sum())} px" if proposal.mask.any() else "no finding"
    return (f'Match {proposal.match + 1} of {count} for "{proposal.request.text}": {what}, {found}. '
            "Shift-N: next match; correct it with the brush, then Save annotation.")
