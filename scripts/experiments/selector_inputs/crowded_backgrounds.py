"""Synthetic training slices on the *crowded* training backgrounds only (>= MIN real tumours of >= 6 px):

    crowded_backgrounds.py OUT TRAIN SEED MIN

Tests whether the validation-background probe of docs/model.md ("Tried: training candidates from a finder that
never saw the slice, and more backgrounds") gained from new backgrounds or from crowded ones (the validation
block's 12 backgrounds hold 7-12 real tumours each, the training blocks' 47 a mean of 6). The same generator as
`lsms-data build-synth --val 0 --test 0`, its training backgrounds filtered; then
`heldout_candidates.py NAME train OUT` and `ADD=$EXP/NAME.pkl train_selectors.py ...`. The same build is now
`lsms-data build-synth OUT --train TRAIN --val 0 --test 0 --seed SEED --min-real-lesions MIN`."""
import sys

from common import ROOT

from lsms_core.dataset import AnnotationDataset
from lsms_core.lits import load_lits_volume
from training import synth
from training.reflits import SOFT_TISSUE_WINDOW

out, train, seed, least = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
volume = load_lits_volume()
print(len(synth.background_slices(volume, min_real_lesions=least)["train"]), "training backgrounds with >=", least,
      "real tumours", flush=True)
dataset = AnnotationDataset.create(ROOT / out, modality="CT", window=SOFT_TISSUE_WINDOW,
                                   description=f"synthetic lesions on training backgrounds with >= {least} tumours")
print(synth.build_synth(volume, dataset.add, {"train": train}, seed=seed, min_real_lesions=least))
