"""Follow through slices, warm: seconds to follow the LiTS volume's largest tumour over 20 slices (10 on
each side of its central slice), at the volume's 128x128 and resampled to 512x512 (a CT series' size),
for each engine. The model is loaded and one follow has run before the timed ones; each timed follow
starts on slices the model has not seen (no cache helps).

    .venv/bin/python -m benchmarks.follow_speed [--runs 3] [--engines lesions box]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

SLICES_EACH_SIDE = 10


def largest_tumour(labels: np.ndarray) -> np.ndarray:
    """(Z,H,W) bool: the LiTS volume's largest 3-D tumour."""
    from benchmarks.follow_lits import tumour_components

    components, _ = tumour_components(labels)
    return components == np.bincount(components.ravel())[1:].argmax() + 1


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.harness import print_table, write_results
    from lsms_core.follow import follow_lesion
    from lsms_core.follow_engines import ENGINES, make_proposer
    from lsms_core.inference import Segmenter
    from lsms_core.lits import load_lits_volume

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["lesions", "box"])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    volume = load_lits_volume()
    tumour = largest_tumour(volume.labels)
    span = np.flatnonzero(tumour.any(axis=(1, 2)))
    centre = int(span[len(span) // 2])
    block = slice(centre - SLICES_EACH_SIDE - 1, centre + SLICES_EACH_SIDE + 2)
    segmenter = Segmenter("default", device="cpu")
    prompt_segmenter = None
    if "box" in args.engines:
        from lsms_core.prompt.prompt_model import PromptSegmenter

        prompt_segmenter = PromptSegmenter(device="cpu")
    rows = []
    for side in (128, 512):
        hu = volume.hu[block]
        truth = tumour[block]
        if side != hu.shape[1]:
            factor = side / hu.shape[1]
            hu = ndimage.zoom(hu, (1, factor, factor), order=1).astype(np.float32)
            truth = ndimage.zoom(truth.astype(np.uint8), (1, factor, factor), order=0).astype(bool)
        seed_index = SLICES_EACH_SIDE + 1
        for engine in args.engines:
            seconds, followed = [], 0
            for run in range(args.runs + 1):
                # a fresh copy per run, offset by a tiny amount: no slice is answered from a cache
                pixels = hu + np.float32(0.001 * (run + 1))
                propose = make_proposer(engine, pixels, True, segmenter, "all lesions", prompt_segmenter)
                started = time.perf_counter()
                result = follow_lesion(pixels.shape, seed_index, truth[seed_index], propose,
                                       max_slices=SLICES_EACH_SIDE)
                if run:  # the first run warms up
                    seconds.append(time.perf_counter() - started)
                followed = len(result.slices) - 1
            median = float(np.median(seconds))
            rows.append({"side": side, "engine": engine, "slices": followed, "seconds": median,
                         "per_slice_ms": 1000 * median / followed})
    print_table(rows, [("side", "slice px", ""), ("engine", "engine", ""), ("slices", "slices followed", ""),
                       ("seconds", "seconds (median)", ".2f"), ("per_slice_ms", "ms per slice", ".0f")])
    if not args.no_write:
        write_results("follow_speed", {"command": "python -m benchmarks.follow_speed", "runs": args.runs,
                                       "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
