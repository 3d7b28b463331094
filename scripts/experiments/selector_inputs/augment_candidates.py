"""Augmented copies of the training slices' candidates: cut, grown/shrunk, spurious blobs; features recomputed."""
import pickle
import numpy as np, torch
from scipy import ndimage
from common import EXP, PLAN, shipped_model, slice_groups
from lsms_core.selection import Candidates, components, candidate_features, _EIGHT
from lsms_core.preprocessing import to_unit_grey
from training.selector_training import SliceSamples, _expressions
prep = shipped_model()[0].config.preprocess
sets = pickle.load(open(EXP / "candidates.pkl", "rb"))
plan = {name: slice_groups(*PLAN[name]) for name in ("train", "extra")}
rng = np.random.default_rng(0)
def augment(labels, shape):
    h, w = shape
    out = np.zeros(shape, bool)
    rows, cols = np.mgrid[0:h, 0:w]
    for k in range(1, int(labels.max()) + 1):
        m = labels == k
        a = m.sum()
        u = rng.random()
        if u < 0.2: m = ndimage.binary_dilation(m, _EIGHT)
        elif u < 0.35 and a > 12: m = ndimage.binary_erosion(m, _EIGHT) if ndimage.binary_erosion(m, _EIGHT).sum() >= 3 else m
        if a >= 40 and rng.random() < 0.35:
            r, c = np.nonzero(m); i = rng.integers(len(r)); th = rng.uniform(0, np.pi)
            dist = np.abs((rows - r[i]) * np.cos(th) - (cols - c[i]) * np.sin(th))
            m = m & (dist > rng.uniform(0.6, 1.6))
        out |= m
    for _ in range(rng.poisson(0.5)):
        rad = rng.uniform(1, 2.2); r0, c0 = rng.integers(8, h - 8), rng.integers(8, w - 8)
        out |= (rows - r0) ** 2 + (cols - c0) ** 2 <= rad ** 2
    return components(out)
out = {}
zero = torch.zeros(256, 1, 1)
for name, pairs in plan.items():
    new = []
    for s, (ds, recs) in zip(sets[name], pairs):
        assert [e.text for e in s.expressions] == [r["text"] for r in recs]
        grey = to_unit_grey(ds.read_image(recs[0]), prep, recs[0]["units"] == "HU")
        labels = augment(s.candidates.labels, s.candidates.labels.shape)
        cand = Candidates(labels, s.candidates.probability, candidate_features(labels, grey, zero, clusters=True))
        exps = _expressions(cand, s.instances, [{"text": e.text} for e in s.expressions], [e.mask for e in s.expressions])
        new.append(SliceSamples(cand, s.instances, exps))
    out.setdefault("added", []).extend(new)
    print(name, len(new), flush=True)
pickle.dump(out["added"], open(EXP / "augmented.pkl", "wb"))  # train with ADD=... NEW=0, 10 epochs
