"""Fine-tune LiteMedSAM's mask decoder on RefLiTS's training lesions (issue 12's Refine: zero-shot outlines are
worse than LSMS's on the patient LSMS trained on; does a decoder that saw these lesions outline them better?).

The image encoder and the prompt encoder stay frozen (the slices' embeddings are computed once); each training
lesion (a connected part of a training mask) gives a box prompt, jittered as LSMS's parts would be (each side
moved by up to 15 % of the box's size, then grown by Refine's 4-px margin), and the decoder learns the lesion's
mask (Dice + BCE). Writes a full LiteMedSAM state dict (``PromptSegmenter(weights=...)`` loads it, strict;
``export_decoder.py`` makes Refine's decoder file of it) and scores it on validation like lsms-eval: ``--prompt
box``, and ``--refine sam`` with the trained decoder outlining (agreement 0.7).

The shipped decoder (lsms_core/weights/litemedsam-refine-decoder.safetensors) is the third command's.

    .venv/bin/python scripts/experiments/refine/finetune_decoder.py data/RefLiTS runs/refine-decoder --steps 1200
    .venv/bin/python scripts/experiments/refine/finetune_decoder.py data/RefLiTS runs/refine-lsms --steps 1200 --lsms-boxes
    .venv/bin/python scripts/experiments/refine/finetune_decoder.py data/RefLiTS runs/refine-lsms-2400 --steps 2400 --lsms-boxes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lsms_core.inference import Segmenter
from lsms_core.prompt import PromptSegmenter
from lsms_core.prompt.prompt_model import load_prompt_model
from lsms_core.prompt.prompts import mask_parts
from training.evaluate import split_records
from training.prompt_eval import evaluate_prompts, evaluate_refined, set_record_image


def training_lesions(dataset_dir: str, split: str, encoder: PromptSegmenter, lsms_boxes: bool = False):
    """[(embedding (1,256,64,64), filled (h,w), shape (H,W), part mask (H,W) bool, box part or None)], one per
    distinct lesion; with ``lsms_boxes`` also one per part of the default model's answer that overlaps a lesion
    of the record's mask (the box from LSMS's part, the target the lesion it overlaps most)."""
    dataset, records = split_records(dataset_dir, split)
    lesions, seen = [], set()
    segmenter = Segmenter("default", device="cpu") if lsms_boxes else None
    for record in records:
        image = dataset.read_image(record)
        set_record_image(encoder, record, image)
        encoded = encoder._encoded()
        parts = mask_parts(dataset.read_mask(record))
        for part in parts:
            key = (encoder.current_key, part.tobytes())
            if key not in seen:
                seen.add(key)
                lesions.append((encoded.embedding.clone(), encoded.filled, encoded.shape, part, None))
        if segmenter is not None and parts:
            answer = segmenter.segment(image, record["text"], hounsfield=record["units"] == "HU").mask
            for found in mask_parts(answer):
                overlaps = [np.count_nonzero(found & part) for part in parts]
                if max(overlaps):
                    lesions.append((encoded.embedding.clone(), encoded.filled, encoded.shape,
                                    parts[int(np.argmax(overlaps))], found))
    return lesions


def box_and_target(filled, shape, part, rng, box_part=None):
    """A box (1,4) in the 256-space (``box_part``'s, else the part's jittered) and the part's mask (1,1,256,256)."""
    source = part if box_part is None else box_part
    rows = np.flatnonzero(source.any(1))
    cols = np.flatnonzero(source.any(0))
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
    w, h = x1 - x0 + 1, y1 - y0 + 1
    jitter = (0.0 if box_part is not None else rng.uniform(-0.15, 0.15, 4)) * np.array([w, h, w, h])
    box = np.array([x0, y0, x1, y1], dtype=np.float64) + jitter + np.array([-1, -1, 1, 1]) * 2.0  # 4 px of 256
    box = np.clip(box, 0, [shape[1] - 1, shape[0] - 1, shape[1] - 1, shape[0] - 1])
    scale = np.array([filled[1] / shape[1], filled[0] / shape[0]])
    box = torch.tensor(box * np.tile(scale, 2), dtype=torch.float32)[None]
    target = F.interpolate(torch.from_numpy(part.astype(np.float32))[None, None], size=filled, mode="bilinear",
                           align_corners=False) > 0.5
    target = F.pad(target.float(), (0, 256 - filled[1], 0, 256 - filled[0]))
    return box, target


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
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    encoder = PromptSegmenter(device="cpu")
    lesions = training_lesions(args.dataset, "train", encoder, args.lsms_boxes)
    print(f"{len(lesions)} training lesions", flush=True)
    model, _ = load_prompt_model()
    model.requires_grad_(False)
    model.mask_decoder.requires_grad_(True)
    model.mask_decoder.train()
    optimiser = torch.optim.AdamW(model.mask_decoder.parameters(), lr=args.lr, weight_decay=0.01)
    start, losses = time.perf_counter(), []
    for step in range(args.steps):
        embedding, filled, shape, part, box_part = lesions[rng.integers(len(lesions))]
        box, target = box_and_target(filled, shape, part, rng, box_part)
        logits, _ = model.decode(embedding, None, box)
        logits = logits[:, :1]
        probability = torch.sigmoid(logits)
        dice = 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target) + dice
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    weights = out / "lite_medsam_reflits_decoder.pth"
    torch.save(model.eval().state_dict(), weights)  # export_decoder.py turns it into Refine's decoder file
    tuned = PromptSegmenter(device="cpu", weights=weights, refine_decoder="zero-shot")  # its own decoder refines
    report = {"steps": args.steps, "lr": args.lr, "lesions": len(lesions), "lsms_boxes": args.lsms_boxes,
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
