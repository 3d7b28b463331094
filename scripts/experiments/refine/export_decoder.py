"""Write Refine's decoder file (lsms_core/prompt/refine_decoder.py: safetensors, float16) from a full LiteMedSAM
state dict that ``finetune_decoder.py`` wrote (its mask decoder's tensors; the image encoder must be the
shipped LiteMedSAM's, whose embeddings the decoder was trained on).

    .venv/bin/python scripts/experiments/refine/export_decoder.py runs/refine-lsms-2400/lite_medsam_reflits_decoder.pth \
        lsms_core/weights/litemedsam-refine-decoder.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lsms_core.prompt.prompt_model import load_prompt_model, locate_weights, file_sha256
from lsms_core.prompt.refine_decoder import save_refine_decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state_dict", help="a full LiteMedSAM state dict written by finetune_decoder.py")
    parser.add_argument("output", help="the .safetensors file to write")
    args = parser.parse_args()
    model, _ = load_prompt_model(args.state_dict)
    report = Path(args.state_dict).with_name("report.json")
    made_by = {"script": "scripts/experiments/refine/finetune_decoder.py", "dataset": "RefLiTS train split",
               "run": json.loads(report.read_text()) if report.is_file() else {}}
    made_by["run"].pop("val", None)  # the scores live in docs/prompts.md
    path = save_refine_decoder(model.mask_decoder, args.output, file_sha256(locate_weights()), made_by)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(path)}")


if __name__ == "__main__":
    main()
