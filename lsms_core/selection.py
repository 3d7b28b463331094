"""Referring selection: LSMS finds the lesions, the selector picks the one(s) the words name.

One implementation for inference (``Segmenter``) and training (``lsms-train-selector``):

1. LSMS runs once per slice with the expression ``ALL_LESIONS_TEXT``; its mask, split into
   8-connected components of >= ``MIN_CANDIDATE_PX`` px at the image's own size, gives the
   *candidates* (``lesion_candidates``).
2. Each candidate is described by ``candidate_features``: the decoder's features averaged over it and
   over a ring around it, and its geometry and intensity, each also relative to the other candidates
   of the slice (a word such as "largest" or "most hypodense" is a comparison).
3. The selector (``lsms_core.model.selector``) scores each candidate against the sentence; the answer
   is the union of the candidates it accepts (``accepted_candidates``: a positive score, or the closest
   match when none has one and the model's ``selector_fallback`` allows it), or nothing ("no such lesion
   on this slice").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.measure import regionprops

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
    features: (K, feature_dim) float32 descriptors (K may be 0).
    """

    labels: np.ndarray
    probability: np.ndarray
    features: torch.Tensor

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


def candidate_features(labels: np.ndarray, grey: np.ndarray, embedding: torch.Tensor,
                       clusters: bool = False) -> torch.Tensor:
    """Descriptors (K, feature_dim(D, clusters)) of the candidates of one slice: decoder features on and
    around each, then (with ``clusters``) ``cluster_features``, then the geometry (always last, so the
    left-right mirroring of training finds its columns at the same place from the end).

    labels: (H,W) int candidates 1..K; grey: (H,W) the windowed image in [0,1] at the same size;
    embedding: (D,h,w) the decoder's ``align`` features of the "all lesions" pass.
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
        return torch.zeros(0, feature_dim(dim, clusters))
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
    pooled = _pool(embedding.float(), torch.from_numpy(np.concatenate([masks, rings])).float())
    on_lesion, on_ring = pooled[:count], pooled[count:]
    parts = [on_lesion, on_ring] + ([cluster_features(labels, area)] if clusters else [])
    return torch.cat(parts + [torch.from_numpy(geometry)], dim=1)


def cluster_features(labels: np.ndarray, area: np.ndarray) -> torch.Tensor:
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
    return torch.from_numpy(features.astype(np.float32))


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


def _pool(embedding: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean of (D,h,w) features under each of (M,H,W) masks, the masks area-resized to (h,w)."""
    small = F.adaptive_avg_pool2d(masks[:, None], embedding.shape[-2:])[:, 0] if masks.shape[-2:] != embedding.shape[-2:] \
        else masks
    weights = small.flatten(1)  # (M, hw)
    total = weights.sum(1, keepdim=True)
    pooled = weights @ embedding.flatten(1).T / total.clamp(min=1e-6)  # (M, D)
    return torch.where(total > 0, pooled, torch.zeros_like(pooled))


def finder_pass(model, model_input: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                image_shape: tuple[int, int]) -> tuple[np.ndarray, torch.Tensor]:
    """LSMS with the "all lesions" words on one (1,3,S,S) input (on the model's device, in its memory
    format): its probability (H,W) float32 at ``image_shape`` and its decoder embedding (D,h,w) on the CPU."""
    output = model(model_input, words, word_mask, features=True)
    logits = F.interpolate(output.logits.float(), size=image_shape, mode="bilinear", align_corners=False)
    probability = torch.sigmoid(logits)[0, 0].cpu().numpy().astype(np.float32)
    return probability, output.embedding[0].float().cpu()


def describe_candidates(probability: np.ndarray, embedding: torch.Tensor, grey: np.ndarray,
                        threshold: float = 0.5, clusters: bool = False) -> Candidates:
    """The candidates of a finder pass at ``threshold``: components of ``probability > threshold``,
    described on ``grey`` (H,W, in [0,1]) and the (D,h,w) ``embedding`` (``clusters``: with
    ``cluster_features``, as the model's ``selector_clusters`` says)."""
    labels = components(probability > threshold)
    return Candidates(labels, probability, candidate_features(labels, grey, embedding, clusters))


def lesion_candidates(model, model_input: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                      image_shape: tuple[int, int], grey: np.ndarray, threshold: float = 0.5) -> Candidates:
    """Run LSMS with the "all lesions" words on one (1,3,S,S) input (on the model's device, in its
    memory format) and describe the candidates at ``image_shape`` (H,W); ``grey`` is the windowed
    image (H,W) in [0,1]."""
    probability, embedding = finder_pass(model, model_input, words, word_mask, image_shape)
    return describe_candidates(probability, embedding, grey, threshold, model.config.selector_clusters)


def sentence_feature(words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real words' features: (B,T,C_l), (B,T) -> (B,C_l)."""
    weights = word_mask.to(words.dtype).unsqueeze(-1)
    return (words * weights).sum(1) / weights.sum(1).clamp(min=1)
