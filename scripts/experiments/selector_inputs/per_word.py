"""Per word: how often the shipped selector chooses right where a single candidate would hit ($EXP/candidates.pkl)."""
import collections
import pickle
import torch
from common import EXP, shipped_model
from lsms_core.text_encoder import TextEncoder
from lsms_core.referring import score_referring
from training.data import TextFeatureCache
torch.set_num_threads(2); torch.set_grad_enabled(False)
st, model = shipped_model()
sel = model.selector
enc = TextEncoder(st.config.text).eval(); words = TextFeatureCache(enc, torch.device("cpu"))
sets = pickle.load(open(EXP / "candidates.pkl", "rb"))
print({k: len(v) for k, v in sets.items()}, flush=True)
from per_word_keys import keys_of
for name in ("ref_test", "syn_test"):
    tab = collections.defaultdict(collections.Counter)
    for s in sets[name]:
        K = s.candidates.count
        g = s.candidates.features[:, -17:].numpy()
        for e in s.expressions:
            if e.named is None: continue
            hits = [score_referring(s.candidates.labels == k + 1, s.instances, e.named).hit for k in range(K)]
            ks = keys_of(e.text)
            if not any(hits):
                tab[ks]["nocand"] += 1; continue
            lg = sel(s.candidates.features[None], torch.ones(1, K, dtype=torch.bool), *words.batch([e.text]))[0]
            hit = score_referring(s.candidates.union((lg > 0).numpy()), s.instances, e.named).hit
            tab[ks]["hit" if hit else "miss"] += 1
            for k in ks: tab[("any", k)]["hit" if hit else "miss"] += 1
    print("==", name)
    rows = sorted(tab.items(), key=lambda kv: -sum(kv[1].values()))
    for k, c in rows:
        n = c["hit"] + c["miss"]
        if n + c["nocand"] >= 8:
            print(f"{str(k):60s} n={n+c['nocand']:4d} cand={n:4d} sel_acc={c['hit']/max(n,1):.2f}")
