"""Selectors trained with and without selector_loss's listwise (ranking) term on cached candidates
($EXP/candidates.pkl from cache_candidates.py), each judged with its closest-match fallback chosen on
validation, as written and with the neutral text "a lesion" (docs/model.md, "The closest match").

    listwise.py WEIGHTS SEEDS [EPOCHS=20] [MEMBERS=1]     e.g.  listwise.py 0,0.5 1,2,3,4

Prints one JSON line per (weight, seed): the chosen fallback, then per test set hit / Dice / leak as
written with that fallback, hit without it, and the neutral hit with it."""
import json
import pickle
import random
import sys
import time

import torch
from common import EXP, neutral, shipped_model

import training.selector_training as st
from lsms_core.model.selector import build_selector
from lsms_core.text_encoder import TextEncoder
from training.data import TextFeatureCache

weights = [float(w) for w in sys.argv[1].split(",")]
seeds = [int(s) for s in sys.argv[2].split(",")]
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
members = int(sys.argv[4]) if len(sys.argv) > 4 else 1
stored, _ = shipped_model()
config = stored.config.model
encoder = TextEncoder(stored.config.text).eval()
sets = pickle.load(open(EXP / "candidates.pkl", "rb"))
words = TextFeatureCache(encoder, torch.device("cpu"))
texts = [e.text for slices in sets.values() for s in slices for e in s.expressions]
words.prefill(texts + [st.mirrored(t) for t in texts] + ["a lesion"])
items = [(s, e) for s in sets["train"] + sets["extra"] for e in s.expressions if e.found]
dim = sets["val"][0].candidates.features.shape[1]



tests = {k: (sets[k], neutral(sets[k])) for k in ("ref_test", "syn_test")}
for weight in weights:
    for seed in seeds:
        torch.manual_seed(seed)
        selector = build_selector(config.selector_kind, dim, config.text_dim, config.selector_hidden,
                                  dim - 2 * config.decoder_channels, config.selector_layers, members)
        start = time.time()
        st.fit_selector(selector, items, words, epochs, 64, 1e-3, 0.01, True, random.Random(seed), listwise=weight)
        selector.eval()
        fallback, _ = st.calibrate_fallback(sets["val"], st.selection_logits(selector, sets["val"], words))
        row = {"listwise": weight, "seed": seed, "seconds": round(time.time() - start), "fallback": fallback}
        for name, (written, plain) in tests.items():
            logits = st.selection_logits(selector, written, words)
            with_fallback = st.score_selection(written, logits, fallback)
            row[name] = {"hit": round(with_fallback["hit_rate"], 3), "dice": round(with_fallback["dice"], 4),
                         "leak": round(with_fallback["leak"], 3),
                         "hit_no_fallback": round(st.score_selection(written, logits)["hit_rate"], 3),
                         "neutral_hit": round(st.score_selection(plain, st.selection_logits(selector, plain, words),
                                                                 fallback)["hit_rate"], 3)}
        torch.save(selector.state_dict(), EXP / f"listwise-{weight}-{seed}.pt")
        print(json.dumps(row), flush=True)
