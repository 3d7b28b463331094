"""The prompt model (LiteMedSAM, lsms_core.prompt), warm, on a real LiTS CT slice resized to the
given size: ``set_image`` (windowing + the TinyViT image encoder; the cache bypassed by clearing
it, so every run really encodes; eager PyTorch, and the encoder through ONNX Runtime as the widget runs it
once its graph is built) and ``predict`` with a box, with one click, and with a click and a
box (prompt encoder + mask decoder + the mask resized back to the slice). Medians and quartiles
of ``--runs`` calls after one warm-up call, in wall time and in this process's CPU time (on a shared
machine the wall time also counts the waits for a core; the CPU time does not).

    nice -n 19 .venv/bin/python -m benchmarks.prompt_model [--sizes 256 512] [--runs 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .harness import interleaved, median_ms, print_table, spread_ms, write_results


def lits_slice(size: int) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """A LiTS axial slice with a tumour, resized to ``size`` square, its largest tumour's box and centre."""
    import torch
    import torch.nn.functional as F

    from lsms_core.lits import TUMOUR, load_lits_volume
    from lsms_core.prompt.prompts import box_of, centre_point, mask_parts

    volume = load_lits_volume()
    z = int(np.argmax((volume.labels == TUMOUR).sum(axis=(1, 2))))
    hu = F.interpolate(torch.from_numpy(volume.hu[z])[None, None], size=(size, size), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    tumour = F.interpolate(torch.from_numpy((volume.labels[z] == TUMOUR).astype(np.float32))[None, None],
                           size=(size, size), mode="nearest")[0, 0].numpy() > 0
    largest = mask_parts(tumour)[0]
    return hu, box_of(largest), centre_point(largest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compiled", action="store_true",
                        help="leave out set_image with the image encoder through ONNX Runtime (lsms_core.compiled)")
    parser.add_argument("--json", help="write the figures here (default benchmarks/results/prompt_model.json)")
    args = parser.parse_args(argv)
    import torch

    from lsms_core.prompt import PromptSegmenter

    segmenter = PromptSegmenter(device=args.device, compiled="off")
    compiled_segmenter = None
    if torch.device(args.device).type == "cpu" and not args.no_compiled:
        import os
        import tempfile

        os.environ["LSMS_CACHE_DIR"] = tempfile.mkdtemp(prefix="lsms-bench-")
        compiled_segmenter = PromptSegmenter(device=args.device, compiled="build")
        if compiled_segmenter.runtime != "onnxruntime":
            compiled_segmenter = None
    rows = []
    for size in args.sizes:
        pixels, box, click = lits_slice(size)

        def encode() -> None:
            segmenter._cache.clear()  # every call runs the image encoder
            segmenter.set_image(pixels, True)

        def encode_compiled() -> None:
            compiled_segmenter._cache.clear()
            compiled_segmenter.set_image(pixels, True)

        encode()
        calls = {f"set_image {size}x{size}": encode,
                 **({f"set_image {size}x{size}, compiled encoder": encode_compiled} if compiled_segmenter else {}),
                 f"predict box {size}x{size}": lambda: segmenter.predict(box=box),
                 f"predict click {size}x{size}": lambda: segmenter.predict(points=[click], labels=[1]),
                 f"predict click+box {size}x{size}": lambda: segmenter.predict(points=[click], labels=[1], box=box)}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in calls}

        def with_cpu_time(name: str, call):
            def timed() -> None:
                start = time.process_time()
                call()
                cpu_seconds[name].append(time.process_time() - start)
            return timed

        seconds = interleaved({name: with_cpu_time(name, call) for name, call in calls.items()}, runs=args.runs)
        for name, values in seconds.items():
            low, high = spread_ms(values)
            rows.append({"call": name, "ms": median_ms(values), "p25": low, "p75": high, "runs": len(values),
                         "cpu_ms": median_ms(cpu_seconds[name][-len(values):])})
    print(f"LiteMedSAM ({segmenter.identity['source']}) on {segmenter.device}, warm, median of {args.runs} "
          f"({torch.get_num_threads()} threads; CPU ms: this process's CPU time, all threads, per call):")
    print_table(rows, [("call", "call", ""), ("ms", "median ms", ".1f"), ("p25", "p25", ".1f"), ("p75", "p75", ".1f"),
                       ("cpu_ms", "CPU ms", ".1f")])
    write_results("prompt_model", {"device": str(segmenter.device), "prompt_model": segmenter.identity,
                                   "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
