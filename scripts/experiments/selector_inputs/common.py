"""Shared by the 2026-12-02 selector experiments: where their files go, and the shipped model."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
EXP = Path(os.environ.get("EXP", ROOT / "runs" / "selector-experiments"))
EXP.mkdir(parents=True, exist_ok=True)


def shipped_model():
    """(stored checkpoint, LSMS + selector in eval mode) of the default model."""
    from lsms_core.checkpoint import read_checkpoint, resolve_checkpoint
    from lsms_core.model import build_model

    stored = read_checkpoint(str(resolve_checkpoint("default")))
    model = build_model(stored.config.model)
    model.load_state_dict(stored.model_state)
    return stored, model.eval()


def slice_groups(paths, split):
    """(dataset, records of one image) in the order ``training.selector_training.collect`` visits them."""
    from collections import defaultdict

    from lsms_core.dataset import AnnotationDataset

    out = []
    for path in paths:
        dataset = AnnotationDataset.open(ROOT / path)
        by_image = defaultdict(list)
        for record in dataset.select(split, expressions=True):
            by_image[record["image"]].append(record)
        out += [(dataset, records) for records in by_image.values()]
    return out


PLAN = {"train": (["data/RefLiTS", "data/synth"], "train"), "extra": (["data/synth-sel"], "train"),
        "val": (["data/RefLiTS", "data/synth"], "val"), "ref_test": (["data/RefLiTS"], "test"),
        "syn_test": (["data/synth"], "test")}


def neutral(slices):
    """The same slices with every expression replaced by "a lesion" (lsms-eval --text-mode neutral)."""
    from training.selector_training import Expression, SliceSamples

    return [SliceSamples(s.candidates, s.instances, [Expression("a lesion", e.target, e.mask, e.named, e.found)
                                                     for e in s.expressions]) for s in slices]
