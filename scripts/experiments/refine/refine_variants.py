"""Refine variants on RefLiTS (issue 12's Refine target: Dice and hit not lower than LSMS, boundary better).

For every record of a split: the default model's answer (LSMS + selector), then each variant of Refine, all
scored like lsms-eval (mean per-image Dice, boundary F1; hit / pointing / leak on the referring cases):

- ``shipped``: lsms_core.prompt.prompts.refine as it was shipped then (LiteMedSAM's own decoder; each part's box
  grown by 4 px of the input, the outline kept where its IoU with the part is >= 0.7);
- ``apart``: the same, but the outline never takes pixels of the slice's *other* lesion candidates (those the
  finder found and the selector did not choose): the redraw cannot merge the named lesion with a neighbour;
- ``apart-near-K``: ``apart``, and the outline limited to K px (8-connected steps) around the part.

    .venv/bin/python scripts/experiments/refine/refine_variants.py data/RefLiTS val
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np
from scipy import ndimage

from lsms_core.inference import Segmenter
from lsms_core.metrics import boundary_f1, dice_iou
from lsms_core.prompt import PromptSegmenter
from lsms_core.prompt.prompts import grown_box, input_margin, mask_parts, box_of

REFINE_AGREEMENT = 0.7  # Refine's gate when these variants were tried (with LiteMedSAM's own decoder)
from lsms_core.referring import referring_instances, score_referring
from training.evaluate import split_records
from training.prompt_eval import set_record_image

EIGHT = np.ones((3, 3), dtype=bool)


def redraw(sam: PromptSegmenter, mask: np.ndarray, others: np.ndarray, near: int | None) -> np.ndarray:
    result = np.zeros(mask.shape, dtype=bool)
    grow = input_margin(mask.shape)
    for part in mask_parts(mask):
        outline, _ = sam.predict(box=grown_box(box_of(part), grow, mask.shape))
        outline &= ~others
        if near is not None:
            outline &= ndimage.binary_dilation(part, EIGHT, iterations=near)
        union = np.count_nonzero(outline | part)
        result |= outline if union and np.count_nonzero(outline & part) / union >= REFINE_AGREEMENT else part
    return result


def main(dataset_dir: str, split: str) -> None:
    dataset, records = split_records(dataset_dir, split)
    masks = {r["id"]: dataset.read_mask(r) for r in records}
    cases = referring_instances(records, lambda r: masks[r["id"]])
    segmenter = Segmenter("default", device="cpu")
    sam = PromptSegmenter(device="cpu", refine_decoder="zero-shot")  # Refine as it was then
    variants = {"lsms": None, "shipped": ("none", None), "apart": ("others", None), "apart-near-2": ("others", 2),
                "apart-near-4": ("others", 4), "near-2": ("none", 2)}
    scores: dict[str, dict[str, list]] = {v: defaultdict(list) for v in variants}
    for index, record in enumerate(records):
        image = dataset.read_image(record)
        result = segmenter.segment(image, record["text"], hounsfield=record["units"] == "HU")
        others = np.zeros(image.shape, dtype=bool) if result.matches is None else \
            (result.matches.labels > 0) & ~result.mask
        set_record_image(sam, record, image)
        for name, how in variants.items():
            if how is None:
                mask = result.mask
            else:
                mask = redraw(sam, result.mask, others if how[0] == "others" else np.zeros_like(others), how[1])
            target = masks[record["id"]]
            scores[name]["dice"].append(dice_iou(mask, target)[0])
            scores[name]["boundary_f1"].append(boundary_f1(mask, target))
            if record["id"] in cases:
                outcome = score_referring(mask, *cases[record["id"]])
                scores[name]["hit"].append(outcome.hit)
                scores[name]["pointing"].append(outcome.pointing)
                scores[name]["leak"].append(outcome.leak)
        print(f"{index + 1}/{len(records)}", end="\r", file=sys.stderr)
    table = {name: {key: round(float(np.mean(values)), 4) for key, values in columns.items()}
             for name, columns in scores.items()}
    print(json.dumps({"split": split, "n": len(records), "n_referring": len(cases), "variants": table}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
