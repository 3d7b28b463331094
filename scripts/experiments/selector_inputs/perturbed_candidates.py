"""Candidates of the training slices from perturbed images (noise, blur, intensity): finder errors like a new slice's?"""
import pickle
import sys
import numpy as np, torch
from scipy import ndimage
from common import EXP, PLAN, shipped_model, slice_groups
from lsms_core.text_encoder import TextEncoder
from lsms_core.selection import ALL_LESIONS_TEXT
from training.selector_training import slice_samples
torch.set_grad_enabled(False)
st, model = shipped_model()
enc = TextEncoder(st.config.text).eval(); wa, ma = enc.encode([ALL_LESIONS_TEXT], torch.device("cpu"))
rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
strength = float(sys.argv[1])
class Perturbed:
    def __init__(self, ds): self.ds = ds
    def read_image(self, r):
        hu = self.ds.read_image(r).astype(np.float32)
        hu = ndimage.gaussian_filter(hu, rng.uniform(0, 1.0 * strength))
        hu = hu * rng.uniform(1 - 0.05 * strength, 1 + 0.05 * strength) + rng.uniform(-10, 10) * strength
        return hu + rng.normal(0, rng.uniform(5, 20) * strength, hu.shape).astype(np.float32)
    def read_mask(self, r): return self.ds.read_mask(r)
out = []
for ds, recs in slice_groups(*PLAN["train"]):
    out += slice_samples(model, st.config.preprocess, wa, ma, Perturbed(ds), recs, torch.device("cpu"))
print(len(out), "slices", flush=True)
pickle.dump(out, open(EXP / f"perturbed-{sys.argv[1]}.pkl", "wb"))
