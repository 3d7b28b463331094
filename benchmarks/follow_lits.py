"""Follow through slices on the LiTS volume's real 3-D tumours: 3-D Dice per tumour, where it stopped.

The tumours are the 3-D connected components (26-connected) of the LiTS label 2 whose central slice
lies in a RefLiTS test block and which span >= 3 slices. Each is seeded on its central slice with
an expression that names it there (RefLiTS's fact engine; where none singles it out, only the
ground-truth seed with the engines that need no words is run) and a seed mask that is either the ground
truth on that slice (``gt``: the mask the user
corrected and accepted) or the default model's answer to the expression (``model``: accepted as is;
a seed that misses the tumour scores 0). Each engine of ``lsms_core.follow_engines`` then follows
it through the whole volume. Reported per tumour: 3-D Dice against the tumour, the slices it
should span and those followed, the slices it stopped too early (missed at the ends) or ran on.

    .venv/bin/python -m benchmarks.follow_lits [--engines lesions words box] [--seeds gt model]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from scipy import ndimage

SEED_KINDS = ("gt", "model")


def tumour_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The LiTS labels' 3-D tumours: (Z,H,W) int labels 1..count of the 26-connected components, and count."""
    from lsms_core.lits import TUMOUR

    return ndimage.label(labels == TUMOUR, structure=np.ones((3, 3, 3), bool))


def test_block_tumours(labels: np.ndarray, min_slices: int = 3) -> list[np.ndarray]:
    """(Z,H,W) bool masks of the tumours whose central slice lies in a test block, >= ``min_slices`` slices."""
    from training.reflits import block_splits

    splits = block_splits(labels.shape[0])
    components, count = tumour_components(labels)
    tumours = []
    for index in range(1, count + 1):
        tumour = components == index
        z = np.flatnonzero(tumour.any(axis=(1, 2)))
        centre = int(z[len(z) // 2])
        if len(z) >= min_slices and splits.get(centre, ("gap",))[0] == "test":
            tumours.append(tumour)
    return tumours


def naming_expression(hu: np.ndarray, labels: np.ndarray, seed: np.ndarray) -> str | None:
    """An expression of RefLiTS's fact engine that names the 2-D lesion under ``seed`` on one slice
    (None when none singles it out, e.g. a cross-section under the engine's 20-px minimum)."""
    from training.reflits import expressions_for_slice

    best, best_overlap = None, 0
    for expression in expressions_for_slice(hu, labels, rng=random.Random(0)):
        if expression.lesion_index is None:
            continue
        overlap = int((expression.mask & seed).sum())
        if overlap > best_overlap:
            best, best_overlap = expression.text, overlap
    return best


def dice3d(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def evaluate(engines: list[str], seed_kinds: list[str], threshold: float | None = None,
             min_probability: float = 0.5, max_slices: int | None = None) -> list[dict]:
    from lsms_core.follow import follow_lesion
    from lsms_core.follow_engines import make_proposer
    from lsms_core.inference import Segmenter
    from lsms_core.lits import load_lits_volume

    volume = load_lits_volume()
    segmenter = Segmenter("default", device="cpu")
    prompt_segmenter = None
    if "box" in engines:
        from lsms_core.prompt.prompt_model import PromptSegmenter

        prompt_segmenter = PromptSegmenter(device="cpu")
    rows = []
    for number, tumour in enumerate(test_block_tumours(volume.labels)):
        span = np.flatnonzero(tumour.any(axis=(1, 2)))
        centre = int(span[len(span) // 2])
        seed_gt = tumour[centre]
        text = naming_expression(volume.hu[centre], volume.labels[centre], seed_gt)
        seeds = {"gt": seed_gt}
        if "model" in seed_kinds and text is not None:
            seeds["model"] = segmenter.segment(volume.hu[centre], text, hounsfield=True).mask
        for seed_kind in seed_kinds:
            for engine in engines:
                row = {"tumour": number, "text": text, "seed": seed_kind, "engine": engine,
                       "true_slices": f"{span[0]}-{span[-1]}", "voxels": int(tumour.sum())}
                if text is None and (seed_kind == "model" or engine == "words"):
                    rows.append({**row, "dice": None, "note": "no expression names it on its central slice"})
                    continue
                seed = seeds[seed_kind]
                if not seed.any():
                    rows.append({**row, "dice": 0.0, "followed": "-", "early": len(span), "ran_on": 0,
                                 "seconds": 0.0, "note": "empty seed"})
                    continue
                propose = make_proposer(engine, volume.hu, True, segmenter, text, prompt_segmenter,
                                        threshold=threshold)
                started = time.perf_counter()
                result = follow_lesion(volume.hu.shape, centre, seed, propose, min_probability=min_probability,
                                       max_slices=max_slices)
                seconds = time.perf_counter() - started
                followed = result.slices
                true = set(span.tolist())
                rows.append({**row, "dice": dice3d(result.mask, tumour),
                             "followed": f"{followed[0]}-{followed[-1]}",
                             "early": len(true - set(followed)), "ran_on": len(set(followed) - true),
                             "seconds": seconds, "per_slice_ms": 1000 * seconds / max(1, len(followed)),
                             "stops": "; ".join(f"{k} {v.slice} ({v.reason})" for k, v in result.stops.items())})
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.harness import print_table, write_results
    from lsms_core.follow_engines import ENGINES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--seeds", nargs="+", choices=SEED_KINDS, default=list(SEED_KINDS))
    parser.add_argument("--threshold", type=float, help="the lesions engine's probability threshold")
    parser.add_argument("--min-probability", type=float, default=0.5, help="stop under this mean probability")
    parser.add_argument("--max-slices", type=int, help="follow at most this many slices each side of the seed")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/follow_lits.json")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = evaluate(args.engines, args.seeds, args.threshold, args.min_probability, args.max_slices)
    print_table(rows, [("tumour", "tumour", ""), ("seed", "seed", ""), ("engine", "engine", ""),
                       ("true_slices", "true", ""), ("followed", "followed", ""), ("dice", "3-D Dice", ".3f"),
                       ("early", "missed slices", ""), ("ran_on", "ran on", ""), ("stops", "stops", ""),
                       ("note", "note", "")])
    summary = []
    for seed in args.seeds:
        for engine in args.engines:
            chosen = [r for r in rows if r["seed"] == seed and r["engine"] == engine and r["dice"] is not None]
            summary.append({"seed": seed, "engine": engine, "n": len(chosen),
                            "mean_dice": float(np.mean([r["dice"] for r in chosen])),
                            "median_dice": float(np.median([r["dice"] for r in chosen])),
                            "missed_slices": int(sum(r["early"] for r in chosen)),
                            "ran_on_slices": int(sum(r["ran_on"] for r in chosen))})
    print()
    print_table(summary, [("seed", "seed", ""), ("engine", "engine", ""), ("n", "tumours", ""),
                          ("mean_dice", "mean 3-D Dice", ".3f"), ("median_dice", "median", ".3f"),
                          ("missed_slices", "slices missed", ""), ("ran_on_slices", "slices ran on", "")])
    if not args.no_write:
        write_results("follow_lits", {"command": "python -m benchmarks.follow_lits", "summary": summary,
                                      "tumours": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
