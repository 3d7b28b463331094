"""Refine's rule settings for one decoder (issue 12): box margin x probability threshold x agreement gate,
scored on RefLiTS's validation and test splits by lsms-eval's loop (``training.evaluate.score_split``).

The default model's masks and each part's outline probabilities are computed once per split and margin, so the
whole grid costs little more than one ``lsms-eval --refine sam`` per margin. Prints one line per setting:
mean Dice, boundary F1, hit rate, pointing (and LSMS's own first).

    .venv/bin/python scripts/experiments/refine/sweep_rule.py data/RefLiTS runs/refine-lsms-2400/lite_medsam_reflits_decoder.pth --margins 2 4 8
    .venv/bin/python scripts/experiments/refine/sweep_rule.py data/RefLiTS zero-shot
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from lsms_core.inference import Segmenter
from lsms_core.prompt import PromptSegmenter
from lsms_core.prompt.prompts import box_of, grown_box, input_margin, mask_parts
from training.evaluate import expression, score_split, split_records
from training.prompt_eval import set_record_image

FIGURES = ("dice", "boundary_f1", "hit_rate", "pointing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("decoder", help="a full LiteMedSAM state dict (finetune_decoder.py), or 'zero-shot'")
    parser.add_argument("--margins", type=float, nargs="+", default=[4.0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--agreements", type=float, nargs="+", default=[0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9])
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    args = parser.parse_args()
    segmenter = Segmenter("default", device="cpu")
    # the decoder under test is the state dict's own: Refine's decoder slot is set to it ("zero-shot")
    prompt = PromptSegmenter(device="cpu", weights=None if args.decoder == "zero-shot" else args.decoder,
                             refine_decoder="zero-shot")
    results = {}
    for split in args.splits:
        dataset, records = split_records(args.dataset, split)
        lsms, outlines = {}, {}
        for record in records:
            image = dataset.read_image(record)
            mask = segmenter.segment(image, expression(record, "as-is"), hounsfield=record["units"] == "HU").mask
            lsms[record["id"]] = mask
            set_record_image(prompt, record, image)
            for margin in args.margins:
                grow = input_margin(mask.shape, margin)
                outlines[record["id"], margin] = [
                    (part, prompt.predict(box=grown_box(box_of(part), grow, mask.shape), refining=True)[1])
                    for part in mask_parts(mask)]

        def score(make) -> list[float]:
            report = score_split(args.dataset, split, lambda record, image, target: make(record))
            return [round(report[key], 4) for key in FIGURES]

        results[f"{split} lsms"] = score(lambda record: lsms[record["id"]])
        print(split, "LSMS", results[f"{split} lsms"], flush=True)
        for margin in args.margins:
            for threshold in args.thresholds:
                for agreement in args.agreements:
                    def refined(record, margin=margin, threshold=threshold, agreement=agreement):
                        result = np.zeros(lsms[record["id"]].shape, dtype=bool)
                        for part, probability in outlines[record["id"], margin]:
                            outline = probability > threshold
                            union = np.count_nonzero(outline | part)
                            agrees = union and np.count_nonzero(outline & part) / union >= agreement
                            result |= outline if agrees else part
                        return result

                    key = f"{split} margin {margin:g} threshold {threshold:g} agreement {agreement:g}"
                    results[key] = score(refined)
                    print(key, results[key], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
