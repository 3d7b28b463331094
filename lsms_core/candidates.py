"""Lesion candidates of one slice, in NumPy: the parts the finder's mask splits into, what describes each
one, and which of them a selector's scores accept (docs/model.md, "Grounding the words").

No PyTorch here: ``lsms_core.selection`` wraps these for inference and training, and ``lsms_core.quick``
(``lsms-segment`` without PyTorch) calls them directly, so both describe candidates with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops

from .resize import area_pool

ALL_LESIONS_TEXT = "all lesions"
MIN_CANDIDATE_PX = 3
RING_PX = 3
GEOMETRY_FEATURES = 17
CLUSTER_FEATURES = 4  # with ``clusters``: what the candidate's cluster of nearby fragments looks like
CLUSTER_PX = 3  # candidates joined by dilating each by this many px (8-connected steps) form a cluster
HORIZONTAL_GEOMETRY = (3, 13)  # geometry columns that change sign under a left-right flip (column, offset)
_EIGHT = np.ones((3, 3), dtype=bool)


def feature_dim(decoder_channels: int, clusters: bool = False) -> int:
    """Length of one candidate's descriptor: features on it, features on its ring, (cluster,) geometry."""
    return 2 * decoder_channels + GEOMETRY_FEATURES + (CLUSTER_FEATURES if clusters else 0)


def geometry_width(clusters: bool = False) -> int:
    """How many trailing descriptor columns a geometry-only selector reads."""
    return GEOMETRY_FEATURES + (CLUSTER_FEATURES if clusters else 0)


@dataclass
class Candidates:
    """The lesion candidates of one slice.

    labels: (H,W) int32, 0 background, 1..K candidates (image size).
    probability: (H,W) float32, LSMS's "all lesions" probability.
    features: (K, feature_dim) float32 descriptors (K may be 0): a torch tensor where
    ``lsms_core.selection`` made them, a NumPy array in ``lsms_core.quick``.
    """

    labels: np.ndarray
    probability: np.ndarray
    features: Any

    @property
    def count(self) -> int:
        return int(self.features.shape[0])

    def union(self, chosen: np.ndarray) -> np.ndarray:
        """(H,W) bool mask of the candidates whose (K,) ``chosen`` flag is set."""
        keep = np.zeros(self.count + 1, dtype=bool)
        keep[1:] = chosen
        return keep[self.labels]


@dataclass
class Matches:
    """What the selector made of one expression on one slice, for "next match": the user steps from the
    answer to the next lesion the words rank, one key press each, when the answer is the wrong lesion.

    labels: (H,W) the slice's candidates 1..K (0 background; the smallest unsigned type that holds K: a
    widget keeps one per result); logits: (K,) the selector's scores for the words; answer: (K,) bool, the
    candidates ``accepted_candidates`` kept. ``Matches.of`` makes one from a slice's Candidates.
    """

    labels: np.ndarray
    logits: np.ndarray
    answer: np.ndarray

    @classmethod
    def of(cls, candidates: Candidates, logits: np.ndarray, answer: np.ndarray) -> Matches:
        dtype = np.uint8 if candidates.count < 256 else np.uint16 if candidates.count < 65536 else np.int32
        return cls(candidates.labels.astype(dtype), np.asarray(logits, dtype=np.float32), np.asarray(answer, bool))

    def choices(self) -> list[np.ndarray]:
        """(K,) bool choices in the order "next match" steps through them: the answer first, then each
        candidate alone, highest logit first (a candidate that is the whole answer already is left out)."""
        out = [self.answer.copy()]
        for k in np.argsort(-self.logits, kind="stable"):
            alone = np.zeros(len(self.logits), dtype=bool)
            alone[k] = True
            if not np.array_equal(alone, out[0]):
                out.append(alone)
        return out

    def mask(self, position: int) -> np.ndarray:
        """(H,W) bool mask of choice ``position`` of ``choices()`` (taken modulo their number)."""
        choices = self.choices()
        keep = np.zeros(len(self.logits) + 1, dtype=bool)
        keep[1:] = choices[position % len(choices)]
        return keep[self.labels]

    def logit(self, position: int) -> float | None:
        """The selector's score of choice ``position`` when it is one candidate alone (None for the answer)."""
        choices = self.choices()
        position %= len(choices)
        return None if position == 0 else float(self.logits[choices[position]][0])


def accepted_candidates(logits: np.ndarray, fallback: float | None = None) -> np.ndarray:
    """(K,) bool: the candidates a selector's (K,) ``logits`` accept: those whose logit is > 0; when there
    is none and ``fallback`` is set, the best candidate if its logit is >= ``fallback`` (the closest match)."""
    chosen = np.asarray(logits) > 0
    if fallback is not None and chosen.size and not chosen.any() and float(np.max(logits)) >= fallback:
        chosen[int(np.argmax(logits))] = True
    return chosen


def components(mask: np.ndarray, min_area: int = MIN_CANDIDATE_PX) -> np.ndarray:
    """8-connected components of a (H,W) bool mask with >= ``min_area`` px, labelled 1..K."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return labels.astype(np.int32)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = np.zeros(count + 1, dtype=np.int32)
    kept = np.flatnonzero(areas[1:] >= min_area) + 1
    keep[kept] = np.arange(1, len(kept) + 1)
    return keep[labels]


def _ranks(values: np.ndarray) -> np.ndarray:
    """0 for the smallest value, 1 for the next, ... (ties share the lower rank)."""
    return np.searchsorted(np.sort(values), values, side="left").astype(np.float32)


def candidate_descriptors(labels: np.ndarray, grey: np.ndarray, embedding: np.ndarray,
                          clusters: bool = False) -> np.ndarray:
    """Descriptors (K, feature_dim(D, clusters)) of the candidates of one slice: decoder features on and
    around each, then (with ``clusters``) ``cluster_descriptors``, then the geometry (always last, so the
    left-right mirroring of training finds its columns at the same place from the end).

    labels: (H,W) int candidates 1..K; grey: (H,W) the windowed image in [0,1] at the same size;
    embedding: (D,h,w) float32, the decoder's ``align`` features of the "all lesions" pass.
    Geometry (in this order): log area (px), area share of the image, centroid row and column in
    [-1, 1], mean grey on the lesion minus on its ring (x10: 0.1 = 40 HU in the soft-tissue window),
    solidity, eccentricity; relative to the slice's candidates: log area minus the largest's, area
    rank from the largest and from the smallest (/4), contrast minus the darkest's, contrast rank from
    the darkest (/4), centroid minus the candidates' mean centroid (row, column), log of the count,
    distance rank from the candidates' mean centroid (/4); last, 1 for candidates of >= 30 px (where
    shape words are defined), else 0.
    """
    count = int(labels.max())
    dim = embedding.shape[0]
    if count == 0:
        return np.zeros((0, feature_dim(dim, clusters)), dtype=np.float32)
    height, width = labels.shape
    regions = regionprops(labels)
    union = labels > 0
    masks = np.stack([labels == r.label for r in regions])  # (K,H,W)
    rings = np.stack([_ring(labels, r, union) for r in regions])
    background = float(grey[~union].mean()) if (~union).any() else float(grey.mean())
    area = np.array([r.area for r in regions], dtype=np.float32)
    centroid = np.array([r.centroid for r in regions], dtype=np.float32)  # (K,2) px
    centroid = centroid / np.array([height, width], dtype=np.float32) * 2 - 1
    inside = np.array([grey[m].mean() for m in masks], dtype=np.float32)
    around = np.array([grey[r].mean() if r.any() else background for r in rings], dtype=np.float32)
    contrast = (inside - around) * 10
    solidity = np.array([r.solidity for r in regions], dtype=np.float32)
    eccentricity = np.array([r.eccentricity for r in regions], dtype=np.float32)
    log_area = np.log(area)
    offset = centroid - centroid.mean(0, keepdims=True)
    geometry = np.stack([
        log_area, area / (height * width), centroid[:, 0], centroid[:, 1], contrast, solidity, eccentricity,
        log_area - log_area.max(), _ranks(-area) / 4, _ranks(area) / 4, contrast - contrast.min(),
        _ranks(contrast) / 4, offset[:, 0], offset[:, 1], np.full(count, np.log(count), np.float32),
        _ranks(np.hypot(offset[:, 0], offset[:, 1])) / 4, (area >= 30).astype(np.float32),
    ], axis=1)
    pooled = pooled_features(np.asarray(embedding, dtype=np.float32), np.concatenate([masks, rings]))
    on_lesion, on_ring = pooled[:count], pooled[count:]
    parts = [on_lesion, on_ring] + ([cluster_descriptors(labels, area)] if clusters else [])
    return np.concatenate(parts + [geometry], axis=1).astype(np.float32, copy=False)


def cluster_descriptors(labels: np.ndarray, area: np.ndarray) -> np.ndarray:
    """(K, CLUSTER_FEATURES) for candidates 1..K of (H,W) ``labels`` with areas (K,) px: the log area of
    the candidate's cluster (candidates within 2 x CLUSTER_PX px of each other) minus the largest
    cluster's, that cluster's rank from the largest (/4), the candidate's share of its cluster, and the
    log of the cluster's count of candidates. The finder cuts a large heterogeneous tumour into
    fragments, and then a fragment outranks the lesion named "the second largest"; the selector sees both
    views and learns when to trust which (docs/model.md, "Selector heads and seeds")."""
    inside = labels > 0
    clusters, _ = ndimage.label(ndimage.binary_dilation(inside, _EIGHT, iterations=CLUSTER_PX), structure=_EIGHT)
    owner = np.zeros(len(area), dtype=np.int64)
    owner[labels[inside] - 1] = clusters[inside]  # a candidate is connected: all its pixels share one cluster
    _, inverse = np.unique(owner, return_inverse=True)
    cluster_area = np.bincount(inverse, weights=area).astype(np.float32)
    cluster_count = np.bincount(inverse).astype(np.float32)
    log_area = np.log(cluster_area)
    rank = _ranks(-cluster_area)[inverse] / 4
    features = np.stack([(log_area - log_area.max())[inverse], rank, area / cluster_area[inverse],
                         np.log(cluster_count)[inverse]], axis=1)
    return features.astype(np.float32)


def _ring(labels: np.ndarray, region, union: np.ndarray) -> np.ndarray:
    """(H,W) bool: the pixels within RING_PX (8-connected steps) of the candidate that belong to no
    candidate. Dilated inside the candidate's bounding box grown by the ring: a few ms at 512x512."""
    top, left, bottom, right = region.bbox
    top, left = max(top - RING_PX, 0), max(left - RING_PX, 0)
    bottom, right = min(bottom + RING_PX, labels.shape[0]), min(right + RING_PX, labels.shape[1])
    ring = np.zeros(labels.shape, dtype=bool)
    local = labels[top:bottom, left:right] == region.label
    ring[top:bottom, left:right] = ndimage.binary_dilation(local, _EIGHT, iterations=RING_PX)
    return ring & ~union


def pooled_features(embedding: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean of (D,h,w) features under each of (M,H,W) masks, the masks area-resized to (h,w): (M,D) float32
    (0 for a mask that covers nothing)."""
    small = area_pool(masks, embedding.shape[-2:])
    weights = small.reshape(len(small), -1)  # (M, hw)
    total = weights.sum(1, keepdims=True)
    pooled = weights @ embedding.reshape(len(embedding), -1).T / np.maximum(total, 1e-6)
    return np.where(total > 0, pooled, 0.0).astype(np.float32)


def chosen_answer(found: Candidates, logits: np.ndarray, fallback: float | None,
                  notes: list[str]) -> tuple[np.ndarray, np.ndarray, Matches]:
    """What a selector's (K,) ``logits`` for the words make of a slice's candidates: the (H,W) bool mask of the
    candidates ``accepted_candidates`` keeps, their probability (H,W) float32 (0 elsewhere), and the Matches
    "next match" steps through. ``notes`` gains a line when the slice has no candidate or only the closest
    match is shown."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    if found.count == 0:
        notes.append("no lesion candidate on this slice")
        return (np.zeros(found.labels.shape, dtype=bool), found.probability,
                Matches.of(found, logits[:0], np.zeros(0, dtype=bool)))
    chosen = accepted_candidates(logits, fallback)
    if chosen.any() and not (logits > 0).any():
        notes.append("no lesion matched the words clearly: the closest match is shown")
    selected = found.union(chosen)
    probability = np.where(selected, found.probability, 0.0).astype(np.float32)
    return selected, probability, Matches.of(found, logits, chosen)
