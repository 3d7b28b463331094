"""Where LSMS's compiled forward spends its time: ONNX Runtime's own profiler on the default preset's graph
(random weights: time does not depend on them), per operator type and per convolution shape.

    .venv/bin/python scripts/profile_compiled.py [--size 480] [--runs 7]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    import onnxruntime

    from lsms_core import compiled
    from lsms_core.config import preset
    from lsms_core.model import build_model

    torch.manual_seed(0)
    config = preset("lsms")
    with tempfile.TemporaryDirectory() as folder:
        graph = compiled.export_onnx(compiled.model_copy(build_model(config).eval()), args.size,
                                     Path(folder) / "lsms.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        feed = {"image": np.random.randn(1, 3, args.size, args.size).astype(np.float32),
                "words": np.random.randn(1, 20, config.text_dim).astype(np.float32),
                "word_mask": np.ones((1, 20), np.float32)}
        for _ in range(args.runs + 1):  # the first run is a warm-up, counted out below by the averages' n
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    runs = args.runs + 1
    by_op: collections.Counter = collections.Counter()
    by_conv: collections.Counter = collections.Counter()
    for event in nodes:
        by_op[event["args"]["op_name"]] += event["dur"]
        if event["args"]["op_name"] == "Conv":
            shapes = [list(s.values())[0] for s in event["args"].get("input_type_shape", [])[:2]]
            by_conv[f"input {shapes[0]} weight {shapes[1]}"] += event["dur"]
    total = sum(by_op.values())
    print(f"{args.size}x{args.size}: {total / runs / 1000:.1f} ms per run in operators")
    for op, micro in by_op.most_common(12):
        print(f"  {op:24s} {micro / runs / 1000:7.2f} ms  {100 * micro / total:5.1f} %")
    print("convolutions by shape:")
    for shape, micro in by_conv.most_common(8):
        print(f"  {micro / runs / 1000:7.2f} ms  {shape}")


if __name__ == "__main__":
    main()
