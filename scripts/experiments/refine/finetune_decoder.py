"""Fine-tune LiteMedSAM's mask decoder on RefLiTS's training lesions (issue 12's Refine: zero-shot outlines are
worse than LSMS's on the patient LSMS trained on; does a decoder that saw these lesions outline them better?).

The image encoder and the prompt encoder stay frozen (the slices' embeddings are computed once); each training
lesion (a connected part of a training mask) gives a box prompt, jittered as LSMS's parts would be (each side
moved by up to 15 % of the box's size, then grown by Refine's 4-px margin), and the decoder learns the lesion's
mask (Dice + BCE). Writes a full LiteMedSAM state dict (``PromptSegmenter(weights=...)`` loads it, strict;
``export_decoder.py`` makes Refine's decoder file of it) and scores it on validation like lsms-eval: ``--prompt
box``, and ``--refine sam`` with the trained decoder outlining (agreement 0.7).

The shipped decoder (lsms_core/weights/litemedsam-refine-decoder.safetensors) is the third command's. The
recipe lives in training/refine_training.py, which ``lsms-train-refine`` runs too (writing the decoder file
directly); this script keeps the experiments' outputs (a full state dict, the box-mode and Refine scores).

    .venv/bin/python scripts/experiments/refine/finetune_decoder.py data/RefLiTS runs/refine-decoder --steps 1200
    .venv/bin/python scripts/experiments/refine/finetune_decoder.py data/RefLiTS runs/refine-lsms --steps 1200 --lsms-boxes
    .venv/bin/python scripts/experiments/refine/finetune_decoder.py data/RefLiTS runs/refine-lsms-2400 --steps 2400 --lsms-boxes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lsms_core.inference import Segmenter
from lsms_core.prompt import PromptSegmenter, load_prompt_model
from training.prompt_eval import evaluate_prompts, evaluate_refined
from training.refine_training import refine_examples, train_refine_decoder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("output")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lsms-boxes", action="store_true",
                        help="also train on the boxes of the default model's parts (targets: the lesions they overlap)")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    encoder = PromptSegmenter(device="cpu", refine_decoder="zero-shot")
    segmenter = Segmenter("default", device="cpu") if args.lsms_boxes else None
    examples = refine_examples(args.dataset, encoder, segmenter)
    print(f"{len(examples)} training boxes", flush=True)
    start, losses = time.perf_counter(), []

    def report_loss(step: int, loss: float) -> None:
        losses.append(loss)
        if step % 100 == 0:
            print(f"step {step}: loss {sum(losses[-100:]) / 100:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    model, _ = load_prompt_model()  # unfused (the encoder's batch norms folded away would change its names)
    model.mask_decoder = train_refine_decoder(encoder, examples, args.steps, args.lr, args.seed, report_loss)
    weights = out / "lite_medsam_reflits_decoder.pth"
    torch.save(model.state_dict(), weights)  # export_decoder.py turns it into Refine's decoder file
    tuned = PromptSegmenter(device="cpu", weights=weights, refine_decoder="zero-shot")  # its own decoder refines
    report = {"steps": args.steps, "lr": args.lr, "lesions": len(examples), "lsms_boxes": args.lsms_boxes,
              "seconds": time.perf_counter() - start}
    for split in ("val",):
        box = evaluate_prompts(args.dataset, split, "box", prompt_segmenter=tuned)
        refined = evaluate_refined("default", args.dataset, split, prompt_segmenter=tuned, agreement=0.7)
        report[split] = {"box": {k: box[k] for k in ("dice", "boundary_f1", "hit_rate")},
                         "refine": {k: refined[k] for k in ("dice", "boundary_f1", "hit_rate", "pointing")},
                         "lsms": {k: refined["unrefined"][k] for k in ("dice", "boundary_f1", "hit_rate", "pointing")}}
    print(json.dumps(report, indent=1))
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
