"""Saved selectors (train_selectors.py's $EXP/selector-NAME-SEED.pt) on the cached candidates, as written and with
every expression replaced by "a lesion" (lsms-eval --text-mode neutral), and per word where a single candidate
would hit.  eval_saved.py CANDIDATES.pkl KIND:SELECTOR.pt [KIND:SELECTOR.pt ...]  (several: their logits averaged,
as a mixed ensemble)"""
import collections
import pickle
import sys

import torch
from common import neutral, shipped_model

import training.selector_training as selector_training
from lsms_core.model.selector import SelectorEnsemble, build_selector
from lsms_core.referring import score_referring
from lsms_core.text_encoder import TextEncoder
from training.data import TextFeatureCache
from per_word_keys import keys_of

torch.set_grad_enabled(False)
stored, _ = shipped_model()
encoder = TextEncoder(stored.config.text).eval()
words = TextFeatureCache(encoder, torch.device("cpu"))
sets = pickle.load(open(sys.argv[1], "rb"))
dim = sets["val"][0].candidates.features.shape[1]
loaded = []
for spec in sys.argv[2:]:
    kind, path = spec.split(":", 1)
    loaded.append(build_selector(kind, dim, stored.config.model.text_dim, 128, dim - 512))
    loaded[-1].load_state_dict(torch.load(path))
selector = loaded[0] if len(loaded) == 1 else SelectorEnsemble(loaded)
selector.eval()
for name in ("val", "ref_test", "syn_test"):
    written = selector_training.evaluate_selection(selector, sets[name], words)
    neutral_figures = selector_training.evaluate_selection(selector, neutral(sets[name]), words)
    print(name, {k: round(written[k], 3) for k in ("dice", "hit_rate", "pointing", "leak")},
          "neutral", {k: round(neutral_figures[k], 3) for k in ("dice", "hit_rate", "leak")}, flush=True)
    if name == "val":
        continue
    selector.eval()  # evaluate_selection leaves it in train mode
    tab = collections.defaultdict(collections.Counter)
    for s in sets[name]:
        count = s.candidates.count
        for e in s.expressions:
            if e.named is None:
                continue
            hits = [score_referring(s.candidates.labels == k + 1, s.instances, e.named).hit for k in range(count)]
            if not any(hits):
                continue
            logits = selector(s.candidates.features[None], torch.ones(1, count, dtype=torch.bool), *words.batch([e.text]))[0]
            hit = score_referring(s.candidates.union((logits > 0).numpy()), s.instances, e.named).hit
            for k in keys_of(e.text):
                tab[k]["hit" if hit else "miss"] += 1
    print("  given a hitting candidate:", " ".join(f"{k}:{c['hit'] / (c['hit'] + c['miss']):.2f}/{c['hit'] + c['miss']}"
                                              for k, c in sorted(tab.items())), flush=True)
