"""The shipped finder's candidates of every slice of the experiments' sets -> $EXP/candidates.pkl."""
import pickle

import torch
from common import EXP, PLAN, ROOT, shipped_model

from lsms_core.dataset import AnnotationDataset
from lsms_core.text_encoder import TextEncoder
from training.selector_training import collect

torch.set_grad_enabled(False)
stored, model = shipped_model()
encoder = TextEncoder(stored.config.text).eval()
sets = {name: collect(model, stored.config.preprocess, encoder, [AnnotationDataset.open(ROOT / p) for p in paths],
                      split, torch.device("cpu")) for name, (paths, split) in PLAN.items()}
print({k: len(v) for k, v in sets.items()})
pickle.dump(sets, open(EXP / "candidates.pkl", "wb"))
