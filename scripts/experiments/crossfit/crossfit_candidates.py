"""Cross-fitted selector training candidates: a training slice's candidates from a finder that never saw its block.

    crossfit_candidates.py CANDIDATES.pkl FOLD=FINDER [FOLD=FINDER] [--out OUT.pkl]

CANDIDATES.pkl is `scripts/experiments/selector_inputs/cache_candidates.py`'s file (the shipped finder's
candidates). Its validation and test sets are kept (at inference the shipped finder makes the candidates); in
its training sets (``train``: RefLiTS + data/synth, ``extra``: data/synth-sel) every slice whose block (or whose
synthetic slice's background block, `make_fold_datasets.py`) lies in fold FOLD gets the candidates of FINDER,
a finder trained on ``without-FOLD``; slices of folds without a finder keep the shipped finder's. Writes OUT.pkl
(default: CANDIDATES-crossfit.pkl beside it) and OUT.replaced.json: which slices of each set changed."""
import argparse
import json
import dataclasses
import pickle
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "experiments" / "selector_inputs"))

from common import PLAN, slice_groups  # noqa: E402
from make_fold_datasets import FOLDS, block_of  # noqa: E402

from lsms_core.checkpoint import read_checkpoint  # noqa: E402
from lsms_core.lits import load_lits_volume  # noqa: E402
from lsms_core.model import build_model  # noqa: E402
from lsms_core.selection import ALL_LESIONS_TEXT  # noqa: E402
from lsms_core.text_encoder import TextEncoder  # noqa: E402
from training.reflits import block_splits  # noqa: E402
from training.selector_training import slice_samples  # noqa: E402


def load_finder(path: str):
    """(stored checkpoint, LSMS in eval mode) with the shipped selector's candidate description (clusters)."""
    stored = read_checkpoint(path)
    config = dataclasses.replace(stored.config.model, select_lesions=True, selector_features="geometry",
                                 selector_clusters=True).validate()
    model = build_model(config)
    state = {k: v for k, v in stored.model_state.items() if not k.startswith("selector.")}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith("selector.") for k in result.missing_keys):
        raise ValueError(f"{path}: not an LSMS checkpoint of this preset ({result})")
    return stored, model.eval()


def main() -> None:
    from tqdm import tqdm

    parser = argparse.ArgumentParser()
    parser.add_argument("candidates")
    parser.add_argument("finders", nargs="+", metavar="FOLD=FINDER")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    source = Path(args.candidates)
    out = Path(args.out) if args.out else source.with_name(source.stem + "-crossfit.pkl")
    finders = {fold: load_finder(path) for fold, path in (item.split("=", 1) for item in args.finders)}
    stored = next(iter(finders.values()))[0]
    encoder = TextEncoder(stored.config.text).eval()
    words_all, mask_all = encoder.encode([ALL_LESIONS_TEXT], torch.device("cpu"))
    splits = block_splits(len(load_lits_volume().hu))
    fold_of_block = {block: fold for fold, blocks in FOLDS.items() for block in blocks}
    sets = pickle.load(open(source, "rb"))
    changed = {}
    for name in ("train", "extra"):
        groups = slice_groups(*PLAN[name])
        if len(groups) != len(sets[name]):
            raise ValueError(f"{name}: {len(groups)} slices in the datasets, {len(sets[name])} cached")
        replaced = []
        for index, (dataset, records) in enumerate(tqdm(groups, desc=name)):
            fold = fold_of_block[block_of(records[0], splits)]
            if fold not in finders:
                continue
            fold_stored, model = finders[fold]
            new, = slice_samples(model, fold_stored.config.preprocess, words_all, mask_all, dataset, records,
                                 torch.device("cpu"))
            if new.instances.shape != sets[name][index].instances.shape or \
                    [e.text for e in new.expressions] != [e.text for e in sets[name][index].expressions]:
                raise ValueError(f"{name} slice {index}: not the cached slice")
            sets[name][index] = new
            replaced.append(index)
        changed[name] = replaced
        print(name, len(replaced), "of", len(groups), "slices replaced", flush=True)
    pickle.dump(sets, open(out, "wb"))
    out.with_suffix(".replaced.json").write_text(json.dumps(changed))


if __name__ == "__main__":
    main()
