"""Does the mask land on the lesion the words name? Quality, not speed: Dice, mIoU and the
referring figures (hit rate, pointing, leak: lsms_core.referring) of checkpoints on a dataset
split, as written and with neutral text, side by side.

    .venv/bin/python -m benchmarks.referring data/RefLiTS --checkpoint default --checkpoint runs/x/last.safetensors

Every figure comes from ``training.evaluate.evaluate``, the same path as ``lsms-eval``.
"""

from __future__ import annotations

import argparse

from training.evaluate import TEXT_MODES, evaluate

from .harness import print_table, write_results

COLUMNS = [("model", "model", ""), ("text", "text", ""), ("dice", "Dice", ".4f"), ("miou", "mIoU", ".4f"),
           ("hit_rate", "hit rate", ".3f"), ("pointing", "pointing", ".3f"), ("leak", "leak", ".3f"),
           ("n_referring", "n referring", "d"), ("n", "n", "d")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--checkpoint", action="append", help="repeatable (default: the shipped model)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/referring.json)")
    args = parser.parse_args(argv)
    rows = []
    for checkpoint in args.checkpoint or ["default"]:
        for mode in TEXT_MODES:
            report = evaluate(checkpoint, args.dataset, args.split, mode, args.device)
            rows.append({"model": f"{report['model']['name']} ({checkpoint})", "text": mode,
                         **{k: report[k] for k in ("dice", "miou", "hit_rate", "pointing", "leak", "n_referring", "n")}})
    print_table(rows, COLUMNS)
    write_results("referring", {"dataset": args.dataset, "split": args.split, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
