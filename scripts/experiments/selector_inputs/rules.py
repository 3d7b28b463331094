"""Area-rank rules on cached candidates: the share of named lesions with a hitting candidate, and how often the
candidate that "largest", "second largest" or "smallest" picks by area alone hits. Args: pickles (a dict of sets
or a list of slices)."""
import collections
import pickle
import sys

import numpy as np
import common  # noqa: F401 - puts the repository on the path
from lsms_core.referring import score_referring
def rates(slices, n=700):
    tab = collections.defaultdict(collections.Counter)
    for s in slices[:n]:
        K = s.candidates.count
        if not K: continue
        area = s.candidates.features[:, -17].numpy(); order = np.argsort(-area)
        for e in s.expressions:
            if e.named is None: continue
            t = e.text.lower()
            key = "second largest" if "second largest" in t else "largest" if "largest" in t else "smallest" if "smallest" in t else None
            if key is None: continue
            hits = [score_referring(s.candidates.labels == k + 1, s.instances, e.named).hit for k in range(K)]
            tab["cand exists"]["y" if any(hits) else "n"] += 1
            if not any(hits): continue
            r = {"largest": order[0], "second largest": order[min(1, K - 1)], "smallest": np.argmin(area)}[key]
            tab[key]["y" if hits[r] else "n"] += 1
    return " ".join(f"{k}:{c['y']/(c['y']+c['n']):.2f}/{c['y']+c['n']}" for k, c in sorted(tab.items()))
for p in sys.argv[1:]:
    d = pickle.load(open(p, "rb"))
    if isinstance(d, dict):
        for k in ("train", "syn_test", "val"): print(p, k, rates(d[k]))
    else: print(p, rates(d))
