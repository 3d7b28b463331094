"""``lsms-eval``: mean per-image Dice and mIoU of a checkpoint on a dataset split, and whether the mask
lands on the lesion the words name (hit rate, pointing, leak; docs/referring.md), per expression kind too."""

from __future__ import annotations

import argparse
import json
import sys

from lsms_core.cli.common import run_cli

from .evaluate import TEXT_MODES, evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsms-eval", description=__doc__)
    parser.add_argument("dataset", help="dataset folder (dataset.json)")
    parser.add_argument("--checkpoint", default="default", help="a .safetensors checkpoint, or 'default'")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--text-mode", default="as-is", choices=TEXT_MODES,
                        help="neutral: every expression becomes 'a lesion' (how much is the text used?)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def format_table(report: dict) -> str:
    """Dice, mIoU, n, then hit rate, pointing, leak over the referring cases, overall and per kind."""
    lines = [f"{'kind':<12} {'Dice':>7} {'mIoU':>7} {'n':>5} {'hit':>7} {'point':>7} {'leak':>7} {'n_ref':>6}"]

    def row(name: str, r: dict) -> str:
        referring = (f"{r['hit_rate']:>7.3f} {r['pointing']:>7.3f} {r['leak']:>7.3f} {r['n_referring']:>6}"
                     if r.get("n_referring") else f"{'-':>7} {'-':>7} {'-':>7} {0:>6}")
        return f"{name:<12} {r['dice']:>7.4f} {r['miou']:>7.4f} {r['n']:>5} {referring}"

    lines.append(row("all", report))
    lines += [row(kind, r) for kind, r in report["per_kind"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        report = evaluate(args.checkpoint, args.dataset, args.split, args.text_mode, args.device,
                          progress=not args.json)
        if args.json:
            print(json.dumps(report, sort_keys=True))
            return 0
        print(f"{report['model']['name']} on {args.dataset} [{args.split}, text {args.text_mode}]")
        print(format_table(report))
        for problem in report["skipped"]:
            print(f"  skipped {problem['id']}: {problem['error']}")
        return 0

    return run_cli("lsms-eval", run)


if __name__ == "__main__":
    sys.exit(main())
