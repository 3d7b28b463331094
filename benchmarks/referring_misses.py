"""Where do a find-then-select model's referring misses come from? Each referring case
(lsms_core.referring) of a split falls in one class:

- ``hit``: the selector's answer is a hit;
- ``selector``: some single candidate would be a hit, the selector chose otherwise;
- ``cut``: candidates cover >= 10 % of the named lesion but none is a hit (split, merged or too small);
- ``missed``: the finder marks < 10 % of the named lesion.

Overall and per expression kind, with the same candidates as inference (one finder pass per slice); and
``next_match``: the share of cases whose answer misses but whose first "next match" (the widget's Shift-N,
``lsms_core.selection.Matches``) hits: what one key press fixes.

    .venv/bin/python -m benchmarks.referring_misses data/RefLiTS --checkpoint default --split test
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict

import numpy as np
import torch

CLASSES = ("hit", "selector", "cut", "missed")
NEXT = "next_match"  # the answer misses, its first next match hits
FOUND_SHARE = 0.1  # below this share of the named lesion under candidates, the finder missed it


def classify(samples, selector, words: tuple[torch.Tensor, torch.Tensor], named: int,
             fallback: float | None = None) -> tuple[str, bool]:
    """The class of one referring case, and whether its first next match hits where the answer does not:
    ``samples`` is the slice's SliceSamples, ``words`` the expression's (1,T,C_l) word features and (1,T)
    mask, ``fallback`` the model's selector_fallback."""
    from lsms_core.referring import score_referring
    from lsms_core.selection import Matches, accepted_candidates
    from training.selector_training import single_candidate_hits

    candidates, instances = samples.candidates, samples.instances
    count = candidates.count
    logits = (selector(candidates.features[None], torch.ones(1, count, dtype=torch.bool), *words)[0].numpy()
              if count else np.zeros(0, dtype=np.float32))
    matches = Matches.of(candidates, logits, accepted_candidates(logits, fallback))
    if score_referring(matches.mask(0), instances, named).hit:
        return "hit", False
    next_hit = len(matches.choices()) > 1 and score_referring(matches.mask(1), instances, named).hit
    if single_candidate_hits(samples, named):
        return "selector", next_hit
    covered = float((candidates.labels[instances == named] > 0).mean())
    return ("cut" if covered >= FOUND_SHARE else "missed"), next_hit


@torch.no_grad()
def breakdown(checkpoint: str, dataset_path: str, split: str) -> dict:
    """{"n": cases, "overall": {class or next_match: share}, "per_kind": {kind: {"n", the same}}}."""
    from lsms_core.checkpoint import read_checkpoint
    from lsms_core.dataset import AnnotationDataset
    from lsms_core.model import build_model
    from lsms_core.selection import ALL_LESIONS_TEXT
    from lsms_core.text_encoder import TextEncoder
    from training.data import TextFeatureCache
    from training.selector_training import slice_samples

    stored = read_checkpoint(checkpoint)
    if not stored.config.model.select_lesions:
        raise SystemExit(f"{checkpoint} has no lesion selector: nothing to break down")
    model = build_model(stored.config.model)
    model.load_state_dict(stored.model_state)
    model.eval()
    device = torch.device("cpu")
    encoder = TextEncoder(stored.config.text).eval()
    words_all, mask_all = encoder.encode([ALL_LESIONS_TEXT], device)
    words = TextFeatureCache(encoder, device)
    dataset = AnnotationDataset.open(dataset_path)
    by_image: dict[str, list[dict]] = defaultdict(list)
    for record in dataset.select(split):
        by_image[record["image"]].append(record)
    overall, per_kind = Counter(), defaultdict(Counter)
    for records in by_image.values():
        [samples] = slice_samples(model, stored.config.preprocess, words_all, mask_all, dataset, records, device)
        words.prefill([e.text for e in samples.expressions])
        for record, expression in zip(records, samples.expressions):
            if expression.named is None:
                continue
            kind, next_hit = classify(samples, model.selector, words.batch([expression.text]), expression.named,
                                      stored.config.model.selector_fallback)
            for counter in [overall] + [per_kind[name] for name in record.get("expression_kinds") or ["unlabelled"]]:
                counter[kind] += 1
                counter[NEXT] += next_hit

    def shares(counter: Counter) -> dict:
        total = sum(counter[c] for c in CLASSES)
        return {"n": total, **{c: round(counter[c] / total, 3) if total else None for c in CLASSES + (NEXT,)}}

    return {"n": sum(overall[c] for c in CLASSES), "overall": shares(overall),
            "per_kind": {k: shares(v) for k, v in sorted(per_kind.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    from lsms_core.checkpoint import resolve_checkpoint

    result = breakdown(str(resolve_checkpoint(args.checkpoint)), args.dataset, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    columns = CLASSES + (NEXT,)
    print(f"| kind | n | {' | '.join(columns)} |\n|---|---|{'---|' * len(columns)}")
    for name, row in [("all", result["overall"]), *result["per_kind"].items()]:
        print(f"| {name} | {row['n']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
