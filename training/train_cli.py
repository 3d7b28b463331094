"""``lsms-train``: train LSMS on an annotation dataset (or an LViT folder); resumable; torchrun-ready."""

from __future__ import annotations

import argparse
import json
import sys

from lsms_core.cli.common import run_cli
from lsms_core.config import PRESETS

from .config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig(dataset="", output="")
    p = argparse.ArgumentParser(prog="lsms-train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", help="dataset folder (dataset.json) or LViT layout (Train_Folder, ...)")
    p.add_argument("-o", "--output", required=True, help="run folder: checkpoints, log.jsonl, resumable state")
    p.add_argument("--resume", action="store_true", help="continue the run in --output with its stored settings")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --output")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help=f"architecture (default: the --init-checkpoint's, else {defaults.preset})")
    p.add_argument("--no-text", action="store_true", help="text-free variant (no language branch, no L_con)")
    p.add_argument("--image-size", type=int, default=defaults.image_size)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="per process")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--poly-power", type=float, default=defaults.poly_power)
    p.add_argument("--warmup-iters", type=int, default=defaults.warmup_iters)
    p.add_argument("--contrastive-weight", type=float, default=defaults.contrastive_weight, help="alpha")
    p.add_argument("--boundary-weight", type=float, default=defaults.boundary_weight, help="lambda")
    p.add_argument("--temperature", type=float, default=defaults.temperature, help="tau")
    p.add_argument("--text-encoder", help="local HuggingFace BERT-family directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    p.add_argument("--train-text-layers", default="", help="encoder layers to fine-tune, e.g. '0-9' or '4,5' "
                                                              "(default: none, frozen and cached)")
    p.add_argument("--text-lr", type=float, help="learning rate of the fine-tuned text layers (default: --lr)")
    p.add_argument("--augment", action="store_true", help="flips with matching text, zoom/shift, intensity jitter")
    p.add_argument("--workers", type=int, default=defaults.workers,
                   help="processes that read and augment samples ahead of the model (0: none; on a machine with "
                        "spare cores or a GPU, 2-8)")
    p.add_argument("--no-vertical-flips", action="store_true",
                   help="with --augment: left-right flips only (chest radiographs are never upside down)")
    p.add_argument("--neutral-share", type=float, default=defaults.neutral_share, metavar="P",
                   help="replace the words of this share of the instance-less lines (whole-finding sentences, as "
                        "QaTa's) by the neutral text 'a lesion' in training, so that lsms-eval --text-mode neutral "
                        "measures what the words add")
    p.add_argument("--mix", action="append", default=[], metavar="DATASET",
                   help="another dataset (e.g. lsms-data build-synth) whose train and val splits are mixed in; "
                        "repeatable")
    p.add_argument("--same-slice", type=int, default=defaults.same_slice, metavar="K",
                   help="put K expressions of one slice with different targets in the same batch (1: plain "
                        "shuffle); the words are then the only way to lower the loss")
    p.add_argument("--init-checkpoint", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights ('default': the shipped model); layers the "
                        "preset adds (position encoding) start at zero")
    p.add_argument("--drop-selector", action="store_true",
                   help="with --init-checkpoint holding a lesion selector (the default model does): leave it out "
                        "and train the LSMS on the expressions themselves. Without this flag the selector is kept "
                        "unchanged and the LSMS is fine-tuned as its lesion finder, on each slice's 'all lesions' "
                        "(the union of its saved masks)")
    p.add_argument("--expression-kinds", nargs="+", default=[], metavar="KIND",
                   help="train and validate only on expressions of these kinds, e.g. 'count' (all lesions, the "
                        "only lesion): the lesion finder a selector (lsms-train-selector) chooses from")
    p.add_argument("--init-mscan", help="SegNeXt MSCAN ImageNet checkpoint (mscan_t.pth) for the encoder")
    p.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"),
                   default=(defaults.window_center, defaults.window_width), help="CT window in HU")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda")
    p.add_argument("--no-amp", action="store_true", help="no bf16/fp16 autocast on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=defaults.channels_last,
                   help="NHWC activations (default; the same model, faster: docs/benchmarks.md)")
    p.add_argument("--save-every-steps", type=int, default=defaults.save_every_steps)
    p.add_argument("--model-name", default=defaults.model_name, help="name stored in the checkpoints")
    p.add_argument("--half-checkpoints", action="store_true", help="store best/last weights in fp16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the JSON log still grows)")
    p.add_argument("--exit-with-parent", nargs="?", type=int, const=0, default=None, metavar="PID",
                   help="stop when the process that started this one ends (the napari widget passes it with its "
                        "own PID, so a closed or crashed napari never leaves an orphan run, even one that died "
                        "while this one was starting; resume it with --resume). Without PID: the parent at start-up")
    return p


def parse_layers(text: str) -> tuple[int, ...]:
    layers: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "-" in part:
            low, high = (int(v) for v in part.split("-"))
            layers.extend(range(low, high + 1))
        else:
            layers.append(int(part))
    return tuple(layers)


def default_preset(init_checkpoint: str | None) -> str:
    """The architecture a run takes when --preset is not given: the init checkpoint's (without the
    "+select" a lesion selector adds), else TrainConfig's default."""
    if init_checkpoint:
        from lsms_core.checkpoint import read_stored_config

        name = read_stored_config(init_checkpoint)[0].preset.removesuffix("+select")
        if name in PRESETS:
            return name
    return TrainConfig.preset


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset, output=args.output, preset=args.preset or default_preset(args.init_checkpoint),
        use_text=not args.no_text,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, poly_power=args.poly_power, warmup_iters=args.warmup_iters,
        contrastive_weight=args.contrastive_weight, boundary_weight=args.boundary_weight,
        temperature=args.temperature, text_encoder=args.text_encoder, max_tokens=args.max_tokens,
        train_text_layers=parse_layers(args.train_text_layers), text_lr=args.text_lr, augment=args.augment,
        vertical_flips=not args.no_vertical_flips, neutral_share=args.neutral_share,
        workers=args.workers,
        init_mscan=args.init_mscan, window_center=args.window[0], window_width=args.window[1], seed=args.seed,
        device=args.device, amp=not args.no_amp, channels_last=args.channels_last,
        save_every_steps=args.save_every_steps, model_name=args.model_name, half_checkpoints=args.half_checkpoints,
        mix=tuple(args.mix), same_slice=args.same_slice, init_checkpoint=args.init_checkpoint,
        keep_selector=not args.drop_selector, expression_kinds=tuple(args.expression_kinds))


def exit_with_parent(parent: int = 0, interval_s: float = 1.0) -> None:
    """Watch, in a daemon thread, for the parent process to end (this process is then re-parented)
    and exit at once: the state saved last (every --save-every-steps iterations and at each
    epoch's end, written atomically) is what --resume continues from.

    ``parent``: the PID of the process that started this one, as that process knows it (0: take
    ``os.getppid()`` now, which misses a parent that died before this line ran, e.g. on a slow
    machine where Python's start-up takes seconds)."""
    import os
    import threading
    import time

    parent = parent or os.getppid()

    def orphaned() -> bool:
        return os.getppid() != parent

    def stop() -> None:
        print("lsms-train: the process that started this run ended; stopping (continue with --resume)",
              file=sys.stderr, flush=True)
        os._exit(143)

    if orphaned():
        stop()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if orphaned():
                stop()

    threading.Thread(target=watch, name="lsms-train-exit-with-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.exit_with_parent is not None:
        exit_with_parent(args.exit_with_parent)

    def train() -> int:
        from .trainer import Trainer

        trainer = Trainer(config_from_args(args), resume=args.resume, show_progress=not args.no_progress,
                          overwrite=args.overwrite)
        summary = trainer.run()
        if trainer.is_main:
            print(json.dumps(summary))
        return 0

    return run_cli("lsms-train", train)


if __name__ == "__main__":
    sys.exit(main())
