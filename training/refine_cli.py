"""``lsms-train-refine``: fine-tune Refine's mask decoder for an LSMS checkpoint on a dataset's training split.

Refine (the widget's "Refine with LiteMedSAM", ``lsms-eval --refine sam``) redraws each part of a text result
with LiteMedSAM; this trains the decoder that outlines, on the dataset's lesions and on the boxes the
checkpoint's own answers give (training/refine_training.py, docs/prompts.md "Refine"). The file is written
next to the checkpoint (``<stem>.refine-decoder.safetensors``), where the widget and ``lsms-eval`` find it
for that checkpoint; then the validation split is scored: LSMS alone, and refined with the new decoder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lsms_core.cli.common import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsms-train-refine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset folder (dataset.json) with a training split")
    parser.add_argument("--checkpoint", default="default",
                        help="the LSMS checkpoint whose answers Refine will redraw ('default': the shipped model)")
    parser.add_argument("--out", default=None,
                        help="where to write the decoder (default: next to the checkpoint, "
                             "<stem>.refine-decoder.safetensors; required with the default checkpoint)")
    parser.add_argument("--steps", type=int, default=2400, help="training steps, one box each (default 2400)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-eval", action="store_true", help="do not score the validation split afterwards")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from lsms_core.checkpoint import resolve_checkpoint
        from lsms_core.prompt.refine_decoder import paired_decoder_path

        if args.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {args.steps}")
        checkpoint = resolve_checkpoint(args.checkpoint)  # a missing checkpoint is reported before any work
        if args.out is None and args.checkpoint == "default":
            raise ValueError("--out is needed with the default checkpoint (the package's folder is not written to)")
        out = Path(args.out).expanduser() if args.out else paired_decoder_path(checkpoint)
        report = train(args, str(checkpoint), out)
        if args.json:
            print(json.dumps(report, sort_keys=True))
        else:
            print(f"wrote {out} ({report['examples']} boxes, {args.steps} steps, {report['seconds']:.0f} s)")
            if "val" in report:
                for name in ("lsms", "refined"):
                    figures = report["val"][name]
                    print(f"  val {name:8} Dice {figures['dice']:.4f}  boundary F1 {figures['boundary_f1']:.4f}  "
                          f"hit {figures['hit_rate']:.3f}")
        return 0

    return run_cli("lsms-train-refine", run)


def train(args: argparse.Namespace, checkpoint: str, out: Path) -> dict:
    from lsms_core.cli.common import progress_bar
    from lsms_core.dataset import AnnotationDataset
    from lsms_core.inference import Segmenter
    from lsms_core.prompt import PromptSegmenter
    from lsms_core.prompt.refine_decoder import save_refine_decoder

    from .evaluate import split_records
    from .prompt_eval import evaluate_refined
    from .refine_training import refine_examples, train_refine_decoder

    split_records(args.dataset, "train")  # a bad dataset is reported before the models load
    start = time.perf_counter()
    segmenter = Segmenter(checkpoint, device=args.device)
    encoder = PromptSegmenter(device=args.device, refine_decoder="zero-shot")
    bar, update = progress_bar("encoding training slices", "slice", enabled=not args.json)
    with bar:
        examples = refine_examples(args.dataset, encoder, segmenter, progress=update)
    bar, update = progress_bar("training the decoder", "step", enabled=not args.json)
    with bar:
        def stepped(step: int, loss: float) -> None:
            update(step, args.steps)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        decoder = train_refine_decoder(encoder, examples, args.steps, args.lr, args.seed, progress=stepped)
    made_by = {"tool": "lsms-train-refine", "dataset": str(Path(args.dataset).resolve()), "checkpoint":
               segmenter.identity, "steps": args.steps, "lr": args.lr, "seed": args.seed, "examples": len(examples)}
    save_refine_decoder(decoder, out, encoder.identity["sha256"], made_by)
    report = {"out": str(out), "examples": len(examples), "seconds": round(time.perf_counter() - start, 1)}
    if not args.no_eval and AnnotationDataset.open(args.dataset).select("val", expressions=True):
        encoder.use_refine_decoder(out)  # the same LiteMedSAM, now outlining with the new decoder
        refined = evaluate_refined(checkpoint, args.dataset, "val", segmenter=segmenter, progress=not args.json,
                                   prompt_segmenter=encoder)
        keys = ("dice", "boundary_f1", "hit_rate", "pointing", "n")
        report["val"] = {"refined": {k: refined[k] for k in keys},
                         "lsms": {k: refined["unrefined"][k] for k in keys}}
    return report


if __name__ == "__main__":
    sys.exit(main())
