"""How good are a set's training candidates? The share of referring expressions (one named lesion, >= 2
lesions) whose named lesion has a hitting candidate (the selector's ceiling), and the mean candidates per slice.

    candidate_quality.py REPLACED.json A.pkl [B.pkl ...]
    candidate_quality.py --list NAME.pkl [...]     (heldout_candidates.py's lists of slices, every slice)

Measured on the slices REPLACED.json lists (crossfit_candidates.py), so that the shipped finder's and a fold
finder's candidates of the same slices compare; the test sets of A.pkl as the reference for new slices."""
import json
import pickle
import sys

import numpy as np

from lsms_core.referring import score_referring


def ceiling(slices) -> tuple[float, int, float]:
    hits = []
    for s in slices:
        for e in s.expressions:
            if e.named is not None:
                hits.append(any(score_referring(s.candidates.labels == k + 1, s.instances, e.named).hit
                                for k in range(s.candidates.count)))
    return float(np.mean(hits)), len(hits), float(np.mean([s.candidates.count for s in slices]))


if sys.argv[1] == "--list":
    for path in sys.argv[2:]:
        print(path, "ceiling %.3f of %d, %.2f candidates per slice" % ceiling(pickle.load(open(path, "rb"))))
    sys.exit()
replaced = json.load(open(sys.argv[1]))
for index, path in enumerate(sys.argv[2:]):
    sets = pickle.load(open(path, "rb"))
    for name in ("train", "extra"):
        print(path, name, "ceiling %.3f of %d, %.2f candidates per slice" % ceiling([sets[name][i] for i in replaced[name]]))
    if index == 0:
        for name in ("ref_test", "syn_test"):
            print(path, name, "ceiling %.3f of %d, %.2f candidates per slice" % ceiling(sets[name]))
