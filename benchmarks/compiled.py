"""The compiled path as the product runs it: ``Segmenter.segment`` of the default model on real LiTS slices,
eager PyTorch against ONNX Runtime (lsms_core.compiled), interleaved in one process; and how equal they are.

Each timed call segments a slice it has not seen (so the finder's "all lesions" pass runs, then the selector),
as when the user moves to another slice; "same slice" calls reuse the candidates (only the selector runs).
Also reported: the seconds to build the graph (once per checkpoint and input size), the share of mask pixels
equal and the largest probability difference over every (slice, expression) pair scored.

    .venv/bin/python -m benchmarks.compiled [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

EXPRESSIONS = ("all lesions", "the largest lesion", "the smallest lesion", "the lesion in the upper left part of "
               "the liver", "the most hypodense lesion")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.environ["LSMS_CACHE_DIR"] = tempfile.mkdtemp(prefix="lsms-bench-")  # a fresh build, timed
    from benchmarks.harness import median_ms, print_table, write_results
    from lsms_core.inference import Segmenter
    from lsms_core.lits import load_lits_volume

    hu = load_lits_volume().hu
    eager = Segmenter("default", "cpu", compiled="off")
    started = time.perf_counter()
    built = Segmenter("default", "cpu", compiled="build")
    build_s = time.perf_counter() - started
    assert built.runtime == "onnxruntime", "ONNX Runtime or the exporter is not installed"
    slices = list(range(20, 120, 4))
    equal = total = 0
    worst = 0.0
    for z in slices:
        for text in EXPRESSIONS:
            a, b = eager.segment(hu[z], text, hounsfield=True), built.segment(hu[z], text, hounsfield=True)
            equal += int((a.mask == b.mask).sum())
            total += a.mask.size
            worst = max(worst, float(np.abs(a.probability - b.probability).max()))
    times: dict[str, list[float]] = {"eager, new slice": [], "compiled, new slice": [],
                                     "eager, same slice": [], "compiled, same slice": []}
    for run in range(args.runs):
        z = 21 + run * 9  # not among the slices above: the finder runs
        for name, segmenter in (("eager", eager), ("compiled", built)):
            start = time.perf_counter()
            segmenter.segment(hu[z], "the largest lesion", hounsfield=True)
            times[f"{name}, new slice"].append(time.perf_counter() - start)
            start = time.perf_counter()
            segmenter.segment(hu[z], "the smallest lesion", hounsfield=True)
            times[f"{name}, same slice"].append(time.perf_counter() - start)
    rows = [{"call": name, "ms": median_ms(values)} for name, values in times.items()]
    print_table(rows, [("call", "Segmenter.segment, default model (256x256)", ""), ("ms", "ms (median)", ".1f")])
    ratio = median_ms(times["eager, new slice"]) / median_ms(times["compiled, new slice"])
    print(f"new slice: compiled {ratio:.2f}x faster; graph built in {build_s:.1f} s (with the model load); "
          f"{len(slices) * len(EXPRESSIONS)} masks: {equal / total:.5%} of pixels equal, largest probability "
          f"difference {worst:.2e}")
    if not args.no_write:
        write_results("compiled", {"command": "python -m benchmarks.compiled", "runs": args.runs, "rows": rows,
                                   "speed_up_new_slice": ratio, "build_s": build_s, "pixels_equal": equal / total,
                                   "max_probability_difference": worst, "masks": len(slices) * len(EXPRESSIONS)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
