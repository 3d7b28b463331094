"""``lsms-info``: parameters and MACs of a preset (or a checkpoint) at a given input size."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import PRESETS, preset
from .common import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsms-info", description=__doc__)
    parser.add_argument("--preset", default="lsms", choices=sorted(PRESETS), help="model preset (default: lsms)")
    parser.add_argument("--checkpoint", help="count the model stored in this checkpoint instead of a preset")
    parser.add_argument("--no-text", action="store_true", help="the text-free variant (SVLA == MSCA)")
    parser.add_argument("--text-dim", type=int, default=None,
                        help="hidden size C_l of the text encoder (384: all-MiniLM-L6-v2, default; "
                             "768: bert-base-uncased as in the paper)")
    parser.add_argument("--text-encoder", help="local HuggingFace directory whose encoder to count")
    parser.add_argument("--image-size", type=int, default=480, help="square input size S (default 480)")
    parser.add_argument("--tokens", type=int, default=20, help="number of word tokens T (default 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("lsms-info", lambda: _info(args))


def _info(args: argparse.Namespace) -> int:
    from ..complexity import count_model, count_text_encoder, format_table, to_json

    if args.image_size < 32 or args.image_size % 32:
        raise ValueError(f"--image-size must be a multiple of 32, got {args.image_size}")
    if args.tokens < 1:
        raise ValueError(f"--tokens must be positive, got {args.tokens}")
    if args.checkpoint:
        from ..checkpoint import read_checkpoint

        stored = read_checkpoint(args.checkpoint)
        config, name = stored.config.model, stored.config.preset
    else:
        overrides = {"use_text": not args.no_text}
        if args.text_dim is not None:
            overrides["text_dim"] = args.text_dim
        config, name = preset(args.preset, **overrides), args.preset
    result = count_text_encoder(count_model(config, args.image_size, args.tokens, name), args.text_encoder)
    if args.json:
        print(to_json(result))
    else:
        print(f"{name} at {args.image_size}x{args.image_size}, C_l = {config.text_dim}, T = {args.tokens}")
        print(format_table([result]))
        print(json.dumps({"params_train_m (with the L_con projection)": round(result.params_train_m, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
