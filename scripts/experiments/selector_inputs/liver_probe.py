"""Can a linear probe on the finder's decoder embedding find the liver?"""
import time
import numpy as np, torch, torch.nn.functional as F
from common import EXP, shipped_model
from lsms_core.text_encoder import TextEncoder
from lsms_core.lits import load_lits_volume, LIVER
from lsms_core.preprocessing import to_model_input
from lsms_core.selection import ALL_LESIONS_TEXT
from training.reflits import block_splits
torch.set_num_threads(1); torch.set_grad_enabled(False)
st, model = shipped_model()
enc = TextEncoder(st.config.text).eval(); wa, ma = enc.encode([ALL_LESIONS_TEXT], torch.device("cpu"))
vol = load_lits_volume(); splits = block_splits(len(vol.hu))
data = {"train": [], "val": [], "test": []}
t = time.time()
for z, (split, _) in splits.items():
    if split != "train" and z % 2: continue
    x = to_model_input(vol.hu[z], st.config.preprocess, True)[None]
    out = model(x, wa, ma, features=True)
    emb = out.embedding[0]  # (D,h,w)
    liver = torch.from_numpy((vol.labels[z] >= LIVER).astype(np.float32))
    data[split].append((emb, liver))
print("passes", round(time.time() - t, 1), {k: len(v) for k, v in data.items()}, data["train"][0][0].shape, flush=True)
D = data["train"][0][0].shape[0]
def pix(items):
    X, Y = [], []
    for emb, liver in items:
        small = F.adaptive_avg_pool2d(liver[None, None], emb.shape[-2:])[0, 0]
        X.append(emb.flatten(1).T); Y.append(small.flatten())
    return torch.cat(X), torch.cat(Y)
X, Y = pix(data["train"])
mu, sd = X.mean(0), X.std(0) + 1e-5
with torch.enable_grad():
    probe = torch.nn.Linear(D, 1)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    Xn = (X - mu) / sd
    def closure():
        opt.zero_grad(); loss = F.binary_cross_entropy_with_logits(probe(Xn)[:, 0], Y) + 1e-4 * probe.weight.pow(2).sum(); loss.backward(); return loss
    opt.step(closure)
for split in ("train", "val", "test"):
    ious = []
    for emb, liver in data[split]:
        logit = probe(((emb.flatten(1).T - mu) / sd))[:, 0].reshape(1, 1, *emb.shape[-2:])
        p = torch.sigmoid(F.interpolate(logit, size=liver.shape, mode="bilinear", align_corners=False))[0, 0] > 0.5
        l = liver > 0.5
        ious.append(float((p & l).sum() / max((p | l).sum(), 1)))
    print(split, "liver IoU mean %.3f min %.3f" % (np.mean(ious), np.min(ious)), flush=True)
torch.save({"probe": probe.state_dict(), "mu": mu, "sd": sd}, EXP / "liver_probe.pt")
