"""Inference-time rules around the shipped selector, on cached candidates of the shipped finder
(cache_candidates.py -> $EXP/candidates.pkl): nothing is retrained (docs/model.md, "Tried: more of the
synthetic test without a new finder").

- density: each synthetic test referring case by the density of its named lesion (real tumour, hypo-,
  iso- or hyperdense synthetic lesion): some single candidate hits it (the selector's ceiling), candidates
  cover >= 10 % of it but none hits (cut), or not (missed); and the finder's peak "all lesions"
  probability on it;
- grow: the chosen candidates grown by a watershed on the probability into the pixels above a lower
  threshold (hysteresis: candidates are still cut at 0.5, so the choice is the same);
- mirror: the selector's logits averaged with its logits for the left-right mirrored slice and expression.

    .venv/bin/python scripts/experiments/selector_inputs/inference_rules.py
"""
import pickle
from collections import Counter, defaultdict

import numpy as np
import torch
from common import EXP, shipped_model, slice_groups
from skimage.segmentation import watershed

import training.selector_training as st
from lsms_core.metrics import Scores
from lsms_core.referring import ReferringScores, score_referring
from lsms_core.selection import accepted_candidates
from lsms_core.text_encoder import TextEncoder
from training.data import TextFeatureCache

torch.set_grad_enabled(False)
stored, model = shipped_model()
fallback = stored.config.model.selector_fallback
words = TextFeatureCache(TextEncoder(stored.config.text).eval(), torch.device("cpu"))
sets = pickle.load(open(EXP / "candidates.pkl", "rb"))
sets = {name: sets[name] for name in ("val", "ref_test", "syn_test")}


# density: the synthetic test's referring cases by what their named lesion is
table = defaultdict(Counter)
peaks = defaultdict(list)
for (_, records), slice_ in zip(slice_groups(["data/synth"], "test"), sets["syn_test"]):
    for record, expression in zip(records, slice_.expressions):
        if expression.named is None:
            continue
        synthetic = {lesion["instance"]: lesion["density"] for lesion in record["source"].get("synthetic") or []}
        density = synthetic.get(record.get("instance"), "real tumour")
        covered = (slice_.candidates.labels[slice_.instances == expression.named] > 0).mean()
        kind = "ceiling" if st.single_candidate_hits(slice_, expression.named) else ("cut" if covered >= 0.1 else "missed")
        table[density][kind] += 1
        peaks[density].append(slice_.candidates.probability[slice_.instances == expression.named].max())
print("synthetic test, named lesion | n | ceiling | cut | missed | finder's peak probability on it, median (p90)")
for density, counts in table.items():
    n = sum(counts.values())
    print(f"{density} | {n} | " + " | ".join(f"{counts[k] / n:.3f}" for k in ("ceiling", "cut", "missed"))
          + f" | {np.median(peaks[density]):.3f} ({np.percentile(peaks[density], 90):.3f})")


def mirrored_logits(slices):
    """The selector's logits for each expression on the left-right mirrored slice (training's mirroring)."""
    out = []
    for slice_ in slices:
        count = slice_.candidates.count
        out.append([model.selector(*st._batch([(slice_, e)], words, [True])[:4])[0, :count].numpy()
                    if count else np.zeros(0, np.float32) for e in slice_.expressions])
    return out


def score(slices, logits, low=None):
    scores, referring = Scores(), ReferringScores()
    for slice_, per_expression in zip(slices, logits):
        labels = slice_.candidates.labels
        if low is not None and slice_.candidates.count:
            probability = slice_.candidates.probability
            labels = watershed(-probability, labels, mask=(probability > low) | (labels > 0))
        for expression, expression_logits in zip(slice_.expressions, per_expression):
            keep = np.zeros(slice_.candidates.count + 1, dtype=bool)
            keep[1:] = accepted_candidates(expression_logits, fallback)
            mask = keep[labels]
            scores.add(mask, expression.mask)
            if expression.named is not None:
                referring.add(score_referring(mask, slice_.instances, expression.named))
    figures = referring.summary()
    return f"Dice {scores.dice:.4f} hit {figures['hit_rate']:.3f} pointing {figures['pointing']:.3f} leak {figures['leak']:.3f}"


print("\nset | rule | figures")
for name, slices in sets.items():
    logits = st.selection_logits(model.selector, slices, words)
    print(f"{name} | shipped | {score(slices, logits)}")
    for low in (0.4, 0.3, 0.2):
        print(f"{name} | grown to p > {low} | {score(slices, logits, low)}")
    averaged = [[(a + b) / 2 for a, b in zip(p, q)] for p, q in zip(logits, mirrored_logits(slices))]
    print(f"{name} | mirrored and averaged | {score(slices, averaged)}", flush=True)
