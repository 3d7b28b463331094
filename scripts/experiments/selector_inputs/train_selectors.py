"""Train FiLM (or attention) selectors on cached candidates, one per variant and seed, as lsms-train-selector does.

    train_selectors.py FILE VARIANTS SEEDS [EPOCHS=20] [KIND=film] [NEW=8] [HCOLS=[4]]

VARIANTS: JSON {name: [indices of the NEW extra columns kept]}; HCOLS: extra columns that change sign under
the left-right mirroring. Env: NOISE (share of each column's s.d. added as Gaussian noise while training), ADD
(comma-separated pickles of more training slices), DROP (comma-separated geometry columns 0-16, zeroed in
every set: what the selector may not read), ADDITIVE (JSON keyword arguments of additive_variants.build_additive for KIND additive), MEMBERS (an ensemble
of that many). Prints Dice / hit / leak / best-single-candidate hit."""
import json
import os
import pickle
import random
import sys
import time

import torch
from common import EXP, shipped_model

import training.selector_training as selector_training
from additive_variants import build_additive
from lsms_core.model.selector import SelectorEnsemble, build_selector
from lsms_core.selection import GEOMETRY_FEATURES, Candidates
from lsms_core.text_encoder import TextEncoder
from training.data import TextFeatureCache

stored, _ = shipped_model()
config = stored.config.model
encoder = TextEncoder(stored.config.text).eval()
path, variants, seeds = sys.argv[1], json.loads(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 20
kind = sys.argv[5] if len(sys.argv) > 5 else "film"
new_columns = int(sys.argv[6]) if len(sys.argv) > 6 else 8
horizontal = json.loads(sys.argv[7]) if len(sys.argv) > 7 else [4]
noise = float(os.environ.get("NOISE", "0"))
dropped = [int(c) for c in os.environ.get("DROP", "").split(",") if c]
sets = pickle.load(open(path, "rb"))
for extra in filter(None, os.environ.get("ADD", "").split(",")):
    sets.setdefault("added", []).extend(pickle.load(open(extra, "rb")))
words = TextFeatureCache(encoder, torch.device("cpu"))
texts = [e.text for slices in sets.values() for s in slices for e in s.expressions]
words.prefill(texts + [selector_training.mirrored(t) for t in texts])


def keep_columns(slices, keep):
    out = []
    for s in slices:
        f = s.candidates.features
        geometry, new, rest = f[:, -GEOMETRY_FEATURES:], f[:, -GEOMETRY_FEATURES - new_columns:-GEOMETRY_FEATURES], \
            f[:, :-GEOMETRY_FEATURES - new_columns]
        geometry = geometry.clone()
        geometry[:, dropped] = 0
        features = torch.cat([rest, new[:, keep], geometry], 1)
        out.append(selector_training.SliceSamples(Candidates(s.candidates.labels, s.candidates.probability, features),
                                                  s.instances, s.expressions))
    return out


plain_batch = selector_training._batch
column_sd = None


def noisy_batch(items, words, flips=None):
    features, valid, text, word_mask, target = plain_batch(items, words, flips)
    if noise > 0:
        features = features + torch.randn_like(features) * noise * column_sd * valid[..., None]
    return features, valid, text, word_mask, target


selector_training._batch = noisy_batch
for name, keep in variants.items():
    chosen = {k: keep_columns(v, keep) for k, v in sets.items()}
    selector_training.HORIZONTAL_GEOMETRY = (3, 13) + tuple(-len(keep) + keep.index(h) for h in horizontal if h in keep)
    training_slices = chosen["train"] + chosen["extra"] + chosen.get("added", [])
    items = [(s, e) for s in training_slices for e in s.expressions if e.found]
    column_sd = torch.cat([s.candidates.features for s in chosen["train"][:2000] if s.candidates.count]).std(0)
    dim = chosen["train"][0].candidates.features.shape[1]
    for seed in seeds:
        torch.manual_seed(seed)
        members = int(os.environ.get("MEMBERS", "1"))
        if kind == "additive" and os.environ.get("ADDITIVE"):  # e.g. '{"ranks": true, "knots": 7}'
            made = [build_additive(dim, config.text_dim, 128, dim - 2 * config.decoder_channels,
                                   **json.loads(os.environ["ADDITIVE"])) for _ in range(members)]
            selector = made[0] if members == 1 else SelectorEnsemble(made)
        else:
            selector = build_selector(kind, dim, config.text_dim, 128, dim - 2 * config.decoder_channels, 2,
                                      members)
        start = time.time()
        selector_training.fit_selector(selector, items, words, epochs, 64, 1e-3, 0.01, True, random.Random(seed))
        figures = {k: selector_training.evaluate_selection(selector, chosen[k], words)
                   for k in ("val", "ref_test", "syn_test")}
        torch.save(selector.state_dict(), EXP / f"selector-{name}-{seed}.pt")
        print(name, seed, round(time.time() - start), json.dumps(
            {k: [round(v[m], 3) for m in ("dice", "hit_rate", "leak", "oracle_hit_rate")] for k, v in figures.items()}),
            flush=True)
