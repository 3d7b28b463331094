"""Refine out of RefLiTS's domain: the abdominal MR of pydicom-data with a reader's hand-drawn liver lesion
(its overlay plane), three rough versions of that lesion refined (agreement 0: every outline taken) with
Refine's decoder and with LiteMedSAM's own; Dice and boundary F1 against the drawn lesion.

    .venv/bin/python scripts/experiments/refine/out_of_domain.py
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from scipy import ndimage

from lsms_core.metrics import boundary_f1, dice_iou
from lsms_core.overlays import drawn_overlays
from lsms_core.prompt import PromptSegmenter
from lsms_core.prompt.prompts import box_of, refine


def main() -> None:
    dataset = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    pixels = dataset.pixel_array.astype(np.float32)
    lesion = next(overlay.mask for overlay in drawn_overlays(dataset, pixels.shape) if overlay.outlines)
    x0, y0, x1, y1 = box_of(lesion)
    filled_box = np.zeros_like(lesion)
    filled_box[y0:y1 + 1, x0:x1 + 1] = True
    rough = {"filled box": filled_box, "dilated 3 px": ndimage.binary_dilation(lesion, iterations=3),
             "eroded 3 px": ndimage.binary_erosion(lesion, iterations=3)}
    print(f"drawn lesion: {lesion.sum()} px of {pixels.shape}")
    for decoder in ("default", "zero-shot"):
        segmenter = PromptSegmenter(device="cpu", refine_decoder=decoder)
        segmenter.set_image(pixels, hounsfield=False)
        for name, mask in rough.items():
            refined = refine(segmenter, mask, agreement=0.0).mask
            print(f"{decoder:9} {name:13} rough Dice {dice_iou(mask, lesion)[0]:.3f} -> refined Dice "
                  f"{dice_iou(refined, lesion)[0]:.3f}, boundary F1 {boundary_f1(refined, lesion):.3f}")


if __name__ == "__main__":
    main()
