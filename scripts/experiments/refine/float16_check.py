"""Refine's decoder stored in float16 against the float32 decoder it came from: Refine of the default model's
answers on the first N validation records with both; mask pixels that differ and the largest probability gap.

    .venv/bin/python scripts/experiments/refine/float16_check.py data/RefLiTS \
        runs/refine-lsms-2400/lite_medsam_reflits_decoder.pth lsms_core/weights/litemedsam-refine-decoder.safetensors
"""

from __future__ import annotations

import argparse

import numpy as np

from lsms_core.inference import Segmenter
from lsms_core.prompt import PromptSegmenter
from lsms_core.prompt.prompts import refine
from training.evaluate import expression, split_records
from training.prompt_eval import set_record_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("state_dict", help="the float32 LiteMedSAM state dict finetune_decoder.py wrote")
    parser.add_argument("decoder", help="the float16 decoder file export_decoder.py made of it")
    parser.add_argument("--records", type=int, default=30)
    args = parser.parse_args()
    segmenter = Segmenter("default", device="cpu")
    full = PromptSegmenter(device="cpu", weights=args.state_dict, refine_decoder="zero-shot")  # its own decoder
    half = PromptSegmenter(device="cpu", refine_decoder=args.decoder)
    dataset, records = split_records(args.dataset, "val")
    differing, gap = 0, 0.0
    for record in records[:args.records]:
        image = dataset.read_image(record)
        answer = segmenter.segment(image, expression(record, "as-is"), hounsfield=record["units"] == "HU").mask
        set_record_image(full, record, image)
        set_record_image(half, record, image)
        a, b = refine(full, answer), refine(half, answer)
        differing += int(np.count_nonzero(a.mask != b.mask))
        gap = max(gap, float(np.abs(a.probability - b.probability).max()))
    print(f"{min(args.records, len(records))} records: {differing} mask pixels differ, largest probability gap {gap:.4f}")


if __name__ == "__main__":
    main()
