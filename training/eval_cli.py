"""``lsms-eval``: mean per-image Dice and mIoU of a checkpoint on a dataset split, and whether the mask
lands on the lesion the words name (hit rate, pointing, leak; docs/referring.md), per expression kind too.
``--prompt box|point`` scores the prompt model alone on prompts made from the ground truth; ``--refine sam``
scores LSMS's masks redrawn by it, next to LSMS's own (docs/prompts.md)."""

from __future__ import annotations

import argparse
import json
import sys

from lsms_core.cli.common import run_cli

from .evaluate import TEXT_MODES, evaluate
from lsms_core.prompt.prompts import REFINE_AGREEMENT, REFINE_MARGIN

from .prompt_eval import PROMPTS, REFINERS, evaluate_prompts, evaluate_refined


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsms-eval", description=__doc__)
    parser.add_argument("dataset", help="dataset folder (dataset.json)")
    parser.add_argument("--checkpoint", default=None, help="a .safetensors checkpoint, or 'default' (the default)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--text-mode", default="as-is", choices=TEXT_MODES,
                        help="neutral: every expression becomes 'a lesion' (how much is the text used?)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--prompt", choices=PROMPTS,
                      help="the prompt model alone: one box (bounding box) or one click (the pixel farthest from the "
                           "border) per connected part of each ground-truth mask; no LSMS, no text")
    mode.add_argument("--refine", choices=REFINERS,
                      help="LSMS's mask, each connected part a box prompt for the prompt model (sam: LiteMedSAM); "
                           "LSMS's own figures are reported next to it")
    parser.add_argument("--refine-margin", type=float, default=REFINE_MARGIN,
                        help="--refine: px of the prompt model's 256-px input each part's box is grown by "
                             f"(default {REFINE_MARGIN:g})")
    parser.add_argument("--refine-agreement", type=float, default=REFINE_AGREEMENT,
                        help="--refine: the outline replaces a part only where their IoU is at least this; 0 takes "
                             f"every outline (default {REFINE_AGREEMENT:g})")
    parser.add_argument("--refine-decoder", default=None,
                        help="--refine: the prompt model's mask decoder that outlines the parts: 'default' (Refine's "
                             "shipped one, fine-tuned on RefLiTS's training split), 'zero-shot' (LiteMedSAM's), or a "
                             "file written by lsms-train-refine (default: the one lsms-train-refine put next to "
                             "--checkpoint, else the shipped one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def format_table(report: dict) -> str:
    """Dice, mIoU, n, then hit rate, pointing, leak over the referring cases, overall and per kind."""
    lines = [f"{'kind':<12} {'Dice':>7} {'mIoU':>7} {'BF1':>7} {'n':>5} {'hit':>7} {'point':>7} {'leak':>7} "
             f"{'n_ref':>6}"]

    def row(name: str, r: dict) -> str:
        referring = (f"{r['hit_rate']:>7.3f} {r['pointing']:>7.3f} {r['leak']:>7.3f} {r['n_referring']:>6}"
                     if r.get("n_referring") else f"{'-':>7} {'-':>7} {'-':>7} {0:>6}")
        return f"{name:<12} {r['dice']:>7.4f} {r['miou']:>7.4f} {r['boundary_f1']:>7.4f} {r['n']:>5} {referring}"

    lines.append(row("all", report))
    if "unrefined" in report:
        lines.append(row("(unrefined)", report["unrefined"]))
    lines += [row(kind, r) for kind, r in report["per_kind"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        if args.prompt and (args.checkpoint is not None or args.text_mode != "as-is"):
            raise ValueError("--prompt scores the prompt model alone: --checkpoint and --text-mode are not used")
        checkpoint = args.checkpoint or "default"
        if args.prompt:
            report = evaluate_prompts(args.dataset, args.split, args.prompt, args.device, progress=not args.json)
        elif args.refine:
            report = evaluate_refined(checkpoint, args.dataset, args.split, args.text_mode, args.refine, args.device,
                                      progress=not args.json, margin=args.refine_margin,
                                      agreement=args.refine_agreement, refine_decoder=args.refine_decoder)
        else:
            report = evaluate(checkpoint, args.dataset, args.split, args.text_mode, args.device,
                              progress=not args.json)
        if args.json:
            print(json.dumps(report, sort_keys=True))
            return 0
        if args.prompt:
            print(f"{report['prompt_model']['name']} on {args.dataset} [{args.split}, {report['prompts']} "
                  f"{args.prompt} prompts from the ground truth]")
        elif args.refine:
            print(f"{report['model']['name']} refined by {report['prompt_model']['name']} with "
                  f"{report['prompt_model']['decoder']['name']} on {args.dataset} "
                  f"[{args.split}, text {args.text_mode}, {report['prompts']} boxes: {report['parts_redrawn']} parts "
                  f"redrawn, {report['parts_kept']} kept]")
        else:
            print(f"{report['model']['name']} on {args.dataset} [{args.split}, text {args.text_mode}]")
        print(format_table(report))
        if report["empty_skipped"]:
            print(f"  not scored: {report['empty_skipped']} annotation(s) with an empty mask (no prompt to make)")
        for problem in report["skipped"]:
            print(f"  skipped {problem['id']}: {problem['error']}")
        return 0

    return run_cli("lsms-eval", run)


if __name__ == "__main__":
    sys.exit(main())
