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

The NumPy pieces (components, descriptors, Matches) live in ``lsms_core.candidates``, shared with the path
that runs without PyTorch (``lsms_core.quick``); this module adds the tensors and the model calls.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .candidates import (  # noqa: F401 - re-exported: one place to import the referring pieces from
    ALL_LESIONS_TEXT, CLUSTER_FEATURES, CLUSTER_PX, GEOMETRY_FEATURES, HORIZONTAL_GEOMETRY, MIN_CANDIDATE_PX, RING_PX,
    _EIGHT, Candidates, Matches, _ranks, accepted_candidates, candidate_descriptors, chosen_answer,
    cluster_descriptors, components, feature_dim, geometry_width)


def candidate_features(labels: np.ndarray, grey: np.ndarray, embedding: torch.Tensor,
                       clusters: bool = False) -> torch.Tensor:
    """``candidates.candidate_descriptors`` as a (K, feature_dim) float32 CPU tensor, from the (D,h,w)
    ``embedding`` tensor (any device or dtype)."""
    return torch.from_numpy(candidate_descriptors(labels, grey, embedding.detach().float().cpu().numpy(), clusters))


def cluster_features(labels: np.ndarray, area: np.ndarray) -> torch.Tensor:
    """``candidates.cluster_descriptors`` as a (K, CLUSTER_FEATURES) float32 tensor."""
    return torch.from_numpy(cluster_descriptors(labels, area))


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
