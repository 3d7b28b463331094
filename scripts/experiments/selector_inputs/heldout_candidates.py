"""The shipped finder's candidates of one split of some datasets -> $EXP/NAME.pkl (a list of SliceSamples).

    heldout_candidates.py NAME SPLIT DATASET [DATASET ...]

Used to give the selector training candidates from slices whose background the finder never saw
(`lsms-data build-synth data/synth-valbg --train 0 --val 2500 --test 0 --seed 13`: synthetic lesions on the
*validation* blocks), as a test of whether realistic candidate errors are what the selector lacks. Train on
them with `ADD=$EXP/NAME.pkl train_selectors.py ...`; the validation figures are then no longer held out."""
import pickle
import sys

import torch
from common import EXP, ROOT, shipped_model

from lsms_core.dataset import AnnotationDataset
from lsms_core.text_encoder import TextEncoder
from training.selector_training import collect

torch.set_grad_enabled(False)
name, split, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
stored, model = shipped_model()
encoder = TextEncoder(stored.config.text).eval()
slices = collect(model, stored.config.preprocess, encoder, [AnnotationDataset.open(ROOT / p) for p in paths],
                 split, torch.device("cpu"))
print(len(slices), "slices", flush=True)
pickle.dump(slices, open(EXP / f"{name}.pkl", "wb"))
