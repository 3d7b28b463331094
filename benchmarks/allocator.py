"""What lsms_core/allocator.py buys: the system allocator vs the tuned one, fresh processes.

Each child builds the default ``lsms`` preset (channels_last, 480x480, 20 tokens), warms up, and
times ``--passes`` forward passes in the main thread and then in a worker thread (as the napari
widget runs them), counting minor page faults per pass. Children alternate between the two
settings ``--rounds`` times, since glibc's own dynamic threshold makes the default vary from
process to process.

    .venv/bin/python -m benchmarks.allocator [--rounds 2] [--passes 9] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from .harness import print_table, write_results

CHILD = """
import json, resource, statistics, sys, threading, time, torch
from lsms_core.allocator import reuse_freed_memory
applied = reuse_freed_memory()
from lsms_core.config import preset
from lsms_core.model import build_model
torch.manual_seed(0)
model = build_model(preset("lsms", text_dim=384)).eval().to(memory_format=torch.channels_last)
image = torch.randn(1, 3, 480, 480).contiguous(memory_format=torch.channels_last)
words, mask = torch.randn(1, 20, 384), torch.ones(1, 20)
passes = int(sys.argv[1])
out = {"applied": applied}
def run(where):
    with torch.inference_mode():
        for _ in range(3):
            model(image, words, mask)
        before, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
        for _ in range(passes):
            start = time.perf_counter()
            model(image, words, mask)
            times.append(time.perf_counter() - start)
        out[where] = {"ms": 1000 * statistics.median(times),
                      "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / passes}
run("main")
worker = threading.Thread(target=run, args=("worker",))
worker.start(); worker.join()
print("RESULT " + json.dumps(out))
"""


def child(system: bool, passes: int) -> dict:
    env = {**os.environ, "LSMS_NAPARI_SYSTEM_MALLOC": "1" if system else "0"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(passes)], env=env, check=True, capture_output=True,
                          text=True)
    return json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--passes", type=int, default=9)
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/allocator.json)")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"system default": [], "tuned (lsms_core/allocator.py)": []}
    for _ in range(args.rounds):
        runs["system default"].append(child(True, args.passes))
        runs["tuned (lsms_core/allocator.py)"].append(child(False, args.passes))
    rows = []
    for name, results in runs.items():
        for where in ("main", "worker"):
            rows.append({"allocator": name, "thread": where,
                         "ms": statistics.median(r[where]["ms"] for r in results),
                         "ms_each": [round(r[where]["ms"], 1) for r in results],
                         "faults": statistics.median(r[where]["faults"] for r in results)})
    print(f"\nlsms forward 480x480, CPU, median of {args.passes} passes per process, {args.rounds} processes each")
    print_table(rows, [("allocator", "allocator", ""), ("thread", "thread", ""), ("ms", "ms", ".1f"),
                       ("ms_each", "per process", ""), ("faults", "minor faults/pass", ".0f")])
    write_results("allocator", {"rounds": args.rounds, "passes": args.passes, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
