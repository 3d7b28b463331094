"""``lsms-train-selector``: teach a trained LSMS to pick the lesion the words name.

LSMS (frozen) marks all lesions of each slice; a small head learns which of them each expression
names (docs/model.md, "Grounding the words"). Writes best/last checkpoints that `lsms-segment`,
`lsms-eval` and the plugin use like any other.
"""

from __future__ import annotations

import argparse
import json
import sys

from lsms_core.cli.common import run_cli
from lsms_core.config import SELECTOR_KINDS


def _selector_kind(value: str) -> str:
    """argparse type: one selector kind, or several joined by '+'."""
    if not value or any(kind not in SELECTOR_KINDS for kind in value.split("+")):
        raise argparse.ArgumentTypeError(f"{value!r}: use {', '.join(SELECTOR_KINDS)}, or several joined by '+' "
                                         "(e.g. film+additive)")
    return value


def _fallback(value: str) -> float | str | None:
    """argparse type: 'auto', 'none', or a logit in [-1000, 0]."""
    if value in ("auto", "none"):
        return None if value == "none" else value
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not -1000 <= number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: use auto, none, or a logit between -1000 and 0 (e.g. -10)")
    return number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsms-train-selector", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", nargs="+", help="dataset folders (dataset.json); their train splits are used for "
                                              "training, their val splits to pick the best epoch")
    p.add_argument("--checkpoint", required=True, help="the trained LSMS (.safetensors, or 'default')")
    p.add_argument("-o", "--output", required=True, help="run folder: best/last checkpoints, log.jsonl")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", choices=("geometry", "all"), default="geometry",
                   help="what the selector reads of each candidate: its geometry and intensity (size, position, "
                        "contrast, shape, each also relative to the slice's others), or that and the decoder's "
                        "features on and around it")
    p.add_argument("--kind", type=_selector_kind, default="film",
                   help="film: the mean of the sentence's word features scales and shifts each candidate; "
                        "attention: the candidates attend to each other and to every word; additive: the "
                        "sentence shapes one function per descriptor column, summed; kinds joined by '+' "
                        "(film+additive, with --members >= 2): a mixed ensemble (docs/model.md)")
    p.add_argument("--layers", type=int, default=2, help="attention blocks of --kind attention")
    p.add_argument("--members", type=int, default=1,
                   help="train this many selectors side by side (different initialisations, the same batches) "
                        "and average their logits: less dependent on the seed (docs/model.md)")
    p.add_argument("--clusters", action="store_true",
                   help="describe each candidate also by its cluster of nearby fragments (within 6 px): the "
                        "finder cuts large tumours into fragments that otherwise outrank a named lesion")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5], metavar="P",
                   help="cut the training slices' candidates from the finder's probability at each of these "
                        "(e.g. 0.35 0.5 0.65: the selector also learns from split and merged candidates); "
                        "validation and inference use 0.5")
    p.add_argument("--fallback", type=_fallback, default="auto",
                   help="when the selector accepts no candidate, keep the best one if its logit is >= this (the "
                        "closest match); 'auto' chooses it on the validation splits (highest Dice + hit rate), "
                        "'none' keeps nothing (the behaviour before 2026-12-03)")
    p.add_argument("--listwise", type=float, default=0.0, metavar="W",
                   help="add W times a ranking loss (-log of the softmax share of the named candidates among the "
                        "slice's candidates) to the binary cross-entropy: the named lesion must outscore the others")
    p.add_argument("--calibrate-only", action="store_true",
                   help="do not train: choose the --checkpoint's own selector's fallback on the datasets' "
                        "validation splits and write OUTPUT/calibrated.safetensors (same weights) and log.jsonl")
    p.add_argument("--no-flip", action="store_true", help="no left-right mirroring of the candidates and words")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the candidates pass runs there)")
    p.add_argument("--model-name", default="lsms", help="name stored in the checkpoints")
    p.add_argument("--half-checkpoints", action="store_true", help="store weights in fp16")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --output")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def train() -> int:
        from pathlib import Path

        from .selector_training import calibrate_selector, train_selector

        if args.calibrate_only:
            if (Path(args.output) / "calibrated.safetensors").exists() and not args.overwrite:
                raise FileExistsError(f"{args.output} holds calibrated.safetensors: pass --overwrite to replace it")
            record = calibrate_selector(args.checkpoint, args.dataset, args.output, args.device, args.half_checkpoints,
                                        progress=not args.no_progress)
            print(json.dumps({k: record[k] for k in ("fallback", "before", "val_slices", "seconds")}))
            return 0

        if args.epochs < 1 or args.batch_size < 1 or not 0 < args.lr <= 1:
            raise ValueError("--epochs and --batch-size must be >= 1 and --lr in (0, 1]")
        if not 1 <= args.members <= 16 or not 1 <= args.layers <= 12:
            raise ValueError(f"--members must be in 1..16 and --layers in 1..12, got {args.members} and "
                             f"{args.layers}")
        if not 0 <= args.listwise <= 10:
            raise ValueError(f"--listwise must lie in 0..10, got {args.listwise}")
        if not all(0 < t < 1 for t in args.thresholds):
            raise ValueError(f"--thresholds must lie in (0, 1), got {args.thresholds}")
        earlier = [n for n in ("best.safetensors", "last.safetensors", "log.jsonl") if (Path(args.output) / n).exists()]
        if earlier and not args.overwrite:
            raise FileExistsError(f"{args.output} holds an earlier run ({', '.join(earlier)}): pass --overwrite "
                                  "to replace it, or another -o folder")
        end = train_selector(args.checkpoint, args.dataset, args.output, args.epochs, args.batch_size, args.lr,
                             args.weight_decay, args.seed, args.device, args.model_name, args.half_checkpoints,
                             progress=not args.no_progress, flip=not args.no_flip, features=args.features,
                             thresholds=tuple(args.thresholds), kind=args.kind, layers=args.layers,
                             members=args.members, clusters=args.clusters, fallback=args.fallback,
                             listwise=args.listwise)
        print(json.dumps(end))
        return 0

    return run_cli("lsms-train-selector", train)


if __name__ == "__main__":
    sys.exit(main())
