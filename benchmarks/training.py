"""Training speed and memory: samples/s and peak RSS per (image size, batch size), CPU, fp32.

Each configuration runs in a fresh child process (so its peak memory is its own): the default
``lsms`` preset with text (C_l 384, 20 tokens of cached word features, as ``lsms-train`` feeds
them), the full LSMS loss (focal + band-weighted Dice + contrastive) and AdamW, ``--warmup``
steps, then ``--steps`` timed steps. ``--channels-last`` adds the same configurations in NHWC
(lsms-train's ``--channels-last``) to see whether it pays on this CPU.

    .venv/bin/python -m benchmarks.training [--sizes 128 256 480] [--batches 1 4 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from .harness import peak_rss_mb, print_table, write_results

TOKENS = 20


def run_one(size: int, batch: int, steps: int, warmup: int, channels_last: bool, device: str) -> dict:
    """One configuration in this process (called in the child)."""
    import torch

    from lsms_core.allocator import reuse_freed_memory
    from lsms_core.config import preset
    from lsms_core.losses import LossConfig, LSMSLoss
    from lsms_core.model import build_model

    torch.manual_seed(0)
    device = torch.device(device)
    if device.type == "cpu":
        reuse_freed_memory()  # as lsms-train's Trainer does on the CPU
    model = build_model(preset("lsms", text_dim=384)).to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss = LSMSLoss(LossConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    image = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    target = torch.zeros(batch, 1, size, size, device=device)
    target[:, :, size // 4: size // 2, size // 3: size // 2] = 1
    words, mask = torch.randn(batch, TOKENS, 384, device=device), torch.ones(batch, TOKENS, device=device)
    baseline_rss = peak_rss_mb()

    def step() -> None:
        terms = loss(model(image, words, mask, features=True), target)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"size": size, "batch": batch, "layout": "NHWC" if channels_last else "NCHW",
            "s_per_step": seconds, "samples_per_s": batch / seconds,
            "peak_rss_mb": peak_rss_mb(), "rss_added_mb": peak_rss_mb() - baseline_rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 480])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true", help="also run every configuration in NHWC")
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/training.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        size, batch, channels_last = json.loads(args.child)
        print("RESULT " + json.dumps(run_one(size, batch, args.steps, args.warmup, channels_last, "cpu")))
        return 0
    rows = []
    layouts = [False, True] if args.channels_last else [False]
    for size in args.sizes:
        for batch in args.batches:
            for channels_last in layouts:
                done = subprocess.run([sys.executable, "-m", "benchmarks.training", "--steps", str(args.steps),
                                       "--warmup", str(args.warmup), "--child",
                                       json.dumps([size, batch, channels_last])],
                                      check=True, capture_output=True, text=True)
                line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
                rows.append(json.loads(line[len("RESULT "):]))
                print(f"  {size}x{size} batch {batch} {rows[-1]['layout']}: {rows[-1]['samples_per_s']:.2f} "
                      "samples/s", flush=True)
    print(f"\nTraining step (lsms, fp32, CPU, forward + loss + backward + AdamW), mean of {args.steps} steps")
    print_table(rows, [("size", "size", ""), ("batch", "batch", ""), ("layout", "layout", ""),
                       ("s_per_step", "s/step", ".2f"), ("samples_per_s", "samples/s", ".2f"),
                       ("peak_rss_mb", "peak RSS MiB", ".0f"), ("rss_added_mb", "added by training MiB", ".0f")])
    write_results("training", {"steps": args.steps, "warmup": args.warmup, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
