"""``lsms-eval``: mean per-image Dice and mIoU of a checkpoint on a dataset split, per expression kind too."""

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        report = evaluate(args.checkpoint, args.dataset, args.split, args.text_mode, args.device,
                          progress=not args.json)
        if args.json:
            print(json.dumps(report, sort_keys=True))
            return 0
        print(f"{report['model']['name']} on {args.dataset} [{args.split}, text {args.text_mode}]: "
              f"Dice {report['dice']:.4f}  mIoU {report['miou']:.4f}  (n = {report['n']})")
        for kind, row in report["per_kind"].items():
            print(f"  {kind:<10} Dice {row['dice']:.4f}  mIoU {row['miou']:.4f}  (n = {row['n']})")
        return 0

    return run_cli("lsms-eval", run)


if __name__ == "__main__":
    sys.exit(main())
