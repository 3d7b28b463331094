"""$EXP/candidates.pkl + 8 columns before the geometry -> $EXP/features.pkl. Layout of each descriptor:
[decoder 2x256 | cluster 4 | new 8 | geometry 17]; new = least depth / the liver's deepest, log(1 + least depth
px), mean depth / deepest, centroid row and column relative to the liver's centre / extent, share inside the
liver, mean and peak finder probability. The liver is LiTS's true label of the slice (axial or oblique plane)."""
import pickle

import numpy as np
import torch
from common import EXP, PLAN, slice_groups
from scipy import ndimage

from lsms_core.lits import LIVER, load_lits_volume
from lsms_core.selection import Candidates
from training.reflits import resample_plane
from training.selector_training import SliceSamples

volume = load_lits_volume()
sets = pickle.load(open(EXP / "candidates.pkl", "rb"))


def liver_of(source):
    if "oblique" in source:
        plane = source["oblique"]
        _, labels, _, _ = resample_plane(volume, plane["z_centre"], plane["tilt_rows_deg"], plane["tilt_cols_deg"])
    else:
        labels = volume.labels[source["axial_slice"]]
    return labels >= LIVER


def liver_features(labels, probability, liver):
    depth = ndimage.distance_transform_edt(liver)
    rows, cols = np.nonzero(liver) if liver.any() else np.nonzero(np.ones_like(liver))
    centre_r, centre_c, extent_r, extent_c = rows.mean(), cols.mean(), np.ptp(rows) + 1, np.ptp(cols) + 1
    deepest = max(depth.max(), 1.0)
    rows_out = []
    for k in range(1, int(labels.max()) + 1):
        on = labels == k
        r, c = np.nonzero(on)
        d, p = depth[on], probability[on]
        rows_out.append([d.min() / deepest, np.log1p(d.min()), d.mean() / deepest, (r.mean() - centre_r) / extent_r,
                         (c.mean() - centre_c) / extent_c, liver[on].mean(), p.mean(), p.max()])
    return torch.tensor(np.array(rows_out, np.float32).reshape(-1, 8))


out = {}
for name, (paths, split) in PLAN.items():
    groups = slice_groups(paths, split)
    assert len(groups) == len(sets[name]), name
    new = []
    for samples, (_, records) in zip(sets[name], groups):
        assert [e.text for e in samples.expressions] == [r["text"] for r in records], name
        candidates = samples.candidates
        extra = liver_features(candidates.labels, candidates.probability, liver_of(records[0]["source"]))
        features = torch.cat([candidates.features[:, :-17], extra, candidates.features[:, -17:]], 1)
        new.append(SliceSamples(Candidates(candidates.labels, candidates.probability, features), samples.instances,
                                samples.expressions))
    out[name] = new
    print(name, len(new), flush=True)
pickle.dump(out, open(EXP / "features.pkl", "wb"))
