"""The shipped model with its candidates cut at other thresholds than 0.5 (``Segmenter.segment(...,
threshold=T)``; the selector is the same), scored as ``lsms-eval --split test`` scores it (docs/model.md,
"Tried: more of the synthetic test without a new finder").

    .venv/bin/python scripts/experiments/selector_inputs/candidate_threshold.py DATASET 0.5,0.4,0.3 [neutral]
"""
import sys

import torch
from common import ROOT

from lsms_core.inference import Segmenter
from training.evaluate import NEUTRAL_TEXT, score_split

torch.set_grad_enabled(False)
dataset = str(ROOT / sys.argv[1])
thresholds = [float(t) for t in sys.argv[2].split(",")]
neutral = len(sys.argv) > 3 and sys.argv[3] == "neutral"
segmenter = Segmenter("default", device="cpu")
for threshold in thresholds:
    def predict(record, image, target, threshold=threshold):
        text = NEUTRAL_TEXT if neutral else record["text"]
        return segmenter.segment(image, text, hounsfield=record["units"] == "HU", threshold=threshold).mask

    report = score_split(dataset, "test", predict)
    print(f"{sys.argv[1]} | {'neutral' if neutral else 'as written'} | {threshold} | Dice {report['dice']:.4f} | "
          f"hit {report['hit_rate']:.3f} | pointing {report['pointing']:.3f} | leak {report['leak']:.3f}", flush=True)
