"""Follow one lesion through a volume's slices, from the mask the user accepted on one of them.

From the seed slice the follower steps to the next slice in each direction (towards lower and
higher slice indices), asks a *proposer* for that slice's lesion parts (8-connected components of a
mask, with a probability map), keeps the parts that continue the previous slice's mask, and stops
where the lesion ends:

- **continues**: a part continues the previous mask when they overlap by at least ``min_overlap``
  of the smaller of the two (so a large neighbour that grazes the lesion's edge is not taken); when
  no part overlaps, the nearest part within ``max_distance_px`` continues it (a small lesion shifts
  a pixel or two between thin slices);
- **stops** when no part continues it, when the kept parts' mean probability is under
  ``min_probability``, when *another lesion begins*: the lesion had been shrinking towards its end
  (its area fell under ``ending_fraction`` of the largest area seen in this direction) and the part
  that touches it grows again by more than ``max_regrowth`` times (a lesion stacked on the next one,
  as in the LiTS volume, would otherwise be followed into its neighbour), or at the volume's end
  (or ``max_slices`` from the seed, or on cancel).

Proposers (``lsms_core.follow_engines``) are the finder's lesion candidates, LSMS with the
expression, or the prompt model with the previous mask's box. This module knows none of them: it
works on (H,W) arrays only and imports no model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)
DIRECTIONS = {"down": -1, "up": 1}  # towards lower / higher slice indices


@dataclass(frozen=True)
class SliceProposal:
    """What a proposer found on one slice: ``mask`` (H,W) bool (its 8-connected parts are the
    choices) and ``probability`` (H,W) float32 in [0, 1]."""

    mask: np.ndarray
    probability: np.ndarray


# (slice index, the previous slice's kept mask (H,W) bool) -> that slice's proposal
Proposer = Callable[[int, np.ndarray], SliceProposal]


@dataclass(frozen=True)
class Stop:
    """Where following ended in one direction: ``slice`` is the first slice *not* added (-1 or Z at
    the volume's ends), ``reason`` one of STOP_REASONS."""

    slice: int
    reason: str


STOP_REASONS = ("no continuing part", "low probability", "another lesion begins", "end of volume", "slice limit",
                "cancelled")


@dataclass
class FollowResult:
    """``mask`` (Z,H,W) bool: the lesion on every slice it was followed to (the seed's included);
    ``stops``: {"down": Stop, "up": Stop}; ``probability``: slice index -> mean probability of the
    kept parts (the seed slice has none)."""

    mask: np.ndarray
    seed_slice: int
    stops: dict[str, Stop]
    probability: dict[int, float] = field(default_factory=dict)

    @property
    def slices(self) -> list[int]:
        """Indices of the slices that hold the lesion, ascending."""
        return [int(z) for z in np.flatnonzero(self.mask.any(axis=(1, 2)))]

    @property
    def cancelled(self) -> bool:
        return any(stop.reason == "cancelled" for stop in self.stops.values())


def continuing_parts(proposed: np.ndarray, previous: np.ndarray, min_overlap: float = 0.1,
                     max_distance_px: float = 3.0) -> np.ndarray:
    """(H,W) bool: the 8-connected parts of ``proposed`` that continue ``previous`` (both (H,W) bool).

    A part continues it when their overlap is >= ``min_overlap`` of the smaller one's area; when no
    part overlaps that much, the single part nearest to ``previous`` (closest pixels, Euclidean, in
    pixels) continues it if it lies within ``max_distance_px``. Empty when none does."""
    proposed = np.asarray(proposed, dtype=bool)
    previous = np.asarray(previous, dtype=bool)
    labels, count = ndimage.label(proposed, structure=_EIGHT)
    if not count or not previous.any():
        return np.zeros(proposed.shape, dtype=bool)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    overlaps = np.bincount(labels[previous].ravel(), minlength=count + 1)
    smaller = np.minimum(areas, previous.sum())
    kept = np.flatnonzero((overlaps >= min_overlap * smaller) & (overlaps > 0))
    kept = kept[kept > 0]
    if len(kept):
        return np.isin(labels, kept)
    distance = ndimage.distance_transform_edt(~previous)
    nearest = ndimage.minimum(distance, labels, index=np.arange(1, count + 1))
    best = int(np.argmin(nearest))
    if nearest[best] <= max_distance_px:
        return labels == best + 1
    return np.zeros(proposed.shape, dtype=bool)


def follow_lesion(shape: tuple[int, int, int], seed_slice: int, seed_mask: np.ndarray, propose: Proposer, *,
                  min_probability: float = 0.5, min_overlap: float = 0.1, max_distance_px: float = 3.0,
                  ending_fraction: float = 0.5, max_regrowth: float = 1.5, max_slices: int | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> FollowResult:
    """Follow the lesion of ``seed_mask`` (H,W) on ``seed_slice`` through a volume of ``shape`` (Z,H,W).

    ``propose(z, previous)`` gives slice ``z``'s proposal given the kept mask of the slice before it
    in the walking direction. ``max_slices``: at most this many slices on each side of the seed.
    ``progress(done, expected)`` is called after each slice (``expected`` grows while the lesion goes
    on: it is the slices proposed so far plus one per direction still walking); ``cancelled()`` is
    polled before each slice, and a cancel keeps what was followed so far.
    """
    depth, height, width = shape
    seed_mask = np.asarray(seed_mask, dtype=bool)
    if seed_mask.shape != (height, width):
        raise ValueError(f"the seed mask is {seed_mask.shape}, the volume's slices are {(height, width)}")
    if not 0 <= seed_slice < depth:
        raise ValueError(f"seed slice {seed_slice} out of range 0..{depth - 1}")
    if not seed_mask.any():
        raise ValueError("the seed mask is empty: accept a mask of the lesion on the seed slice first")
    mask = np.zeros(shape, dtype=bool)
    mask[seed_slice] = seed_mask
    result = FollowResult(mask, seed_slice, {})
    done = 0
    walking = dict(DIRECTIONS)
    positions = {name: seed_slice for name in walking}
    previous = {name: seed_mask for name in walking}
    largest = {name: int(seed_mask.sum()) for name in walking}
    limit = depth if max_slices is None else max(0, int(max_slices))
    # Both directions advance in turn, so a cancel leaves a result centred on the seed.
    while walking:
        for name, step in list(walking.items()):
            z = positions[name] + step
            reason = None
            if not 0 <= z < depth:
                reason = "end of volume"
            elif abs(z - seed_slice) > limit:
                reason = "slice limit"
            elif cancelled is not None and cancelled():
                reason = "cancelled"
            if reason is None:
                proposal = propose(z, previous[name])
                kept = continuing_parts(proposal.mask, previous[name], min_overlap, max_distance_px)
                done += 1
                if not kept.any():
                    reason = "no continuing part"
                else:
                    mean = float(np.asarray(proposal.probability)[kept].mean())
                    area, before = int(kept.sum()), int(previous[name].sum())
                    if mean < min_probability:
                        reason = "low probability"
                    elif before < ending_fraction * largest[name] and area > max_regrowth * before:
                        reason = "another lesion begins"
                    else:
                        largest[name] = max(largest[name], area)
                        mask[z] = kept
                        result.probability[z] = mean
                        positions[name], previous[name] = z, kept
            if reason is not None:
                result.stops[name] = Stop(z, reason)
                del walking[name]
            if progress is not None:
                progress(done, done + len(walking))
            if reason == "cancelled":  # the other direction stops too
                for other in list(walking):
                    result.stops[other] = Stop(positions[other] + walking.pop(other), "cancelled")
                break
    return result
