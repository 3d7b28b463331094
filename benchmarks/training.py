"""Training speed and memory: samples/s and peak RSS per (image size, batch size), CPU, fp32.

Each configuration runs in a fresh child process (so its peak memory is its own): the default
``lsms`` preset with text (C_l 384, 20 tokens of cached word features, as ``lsms-train`` feeds
them), the full LSMS loss (focal + band-weighted Dice + contrastive) and AdamW, ``--warmup``
steps, then ``--steps`` timed steps. ``--layouts`` chooses NCHW and/or NHWC (channels_last,
lsms-train's default) and ``--optimisers`` AdamW's ``foreach`` and/or ``fused`` implementation (lsms-train's
default where the device has it); ``--repeats`` runs the whole set that many times, interleaved, so the
machine's drift shows between repeats rather than between configurations.

    .venv/bin/python -m benchmarks.training [--sizes 128 256 480] [--batches 1 4 16]
        [--layouts NCHW NHWC] [--optimisers foreach fused] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from .harness import lsms_model, peak_rss_mb, print_table, random_batch, write_results


def _model_and_optimiser(device, channels_last: bool, fused: bool):
    """The benchmarks' lsms model in training mode and its AdamW (``fused`` or foreach)."""
    import torch

    model = lsms_model(device, channels_last, train=True)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=fused or None)


def _inputs(size: int, batch: int, device, channels_last: bool):
    """``harness.random_batch`` and a (B,1,S,S) target with one square lesion: image, target, words, mask."""
    import torch

    image, words, mask = random_batch(device, batch, size, channels_last)
    target = torch.zeros(batch, 1, size, size, device=device)
    target[:, :, size // 4: size // 2, size // 3: size // 2] = 1
    return image, target, words, mask


def run_one(size: int, batch: int, steps: int, warmup: int, channels_last: bool, device: str,
            fused: bool = False) -> dict:
    """One configuration in this process (called in the child)."""
    import torch

    from lsms_core.allocator import reuse_freed_memory
    from lsms_core.losses import LossConfig, LSMSLoss

    device = torch.device(device)
    if device.type == "cpu":
        reuse_freed_memory()  # as lsms-train's Trainer does on the CPU
    model, optimizer = _model_and_optimiser(device, channels_last, fused)
    loss = LSMSLoss(LossConfig())
    image, target, words, mask = _inputs(size, batch, device, channels_last)
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
            "optimiser": "fused" if fused else "foreach",
            "s_per_step": seconds, "samples_per_s": batch / seconds,
            "peak_rss_mb": peak_rss_mb(), "rss_added_mb": peak_rss_mb() - baseline_rss}


def optimiser_ab(size: int, batch: int, steps: int) -> list[dict]:
    """AdamW foreach vs fused in one process: two identical NHWC models step in turn (so both see the same
    machine), median of ``steps`` steps after one warm-up; the optimiser's own step timed apart."""
    import torch

    from lsms_core.allocator import reuse_freed_memory
    from lsms_core.losses import LossConfig, LSMSLoss

    reuse_freed_memory()
    cpu = torch.device("cpu")
    loss = LSMSLoss(LossConfig())
    runs = {name: (*_model_and_optimiser(cpu, True, name == "fused"), []) for name in ("foreach", "fused")}
    image, target, words, mask = _inputs(size, batch, cpu, True)
    for step in range(steps + 1):
        for model, optimiser, times in runs.values():
            start = time.perf_counter()
            terms = loss(model(image, words, mask, features=True), target)
            optimiser.zero_grad(set_to_none=True)
            terms["total"].backward()
            stepping = time.perf_counter()
            optimiser.step()
            end = time.perf_counter()
            if step:
                times.append((end - start, end - stepping))
    rows = []
    for name, (_, _, times) in runs.items():
        total, optimiser_s = (sorted(t[i] for t in times)[len(times) // 2] for i in (0, 1))
        rows.append({"size": size, "batch": batch, "optimiser": name, "s_per_step": total,
                     "optimiser_ms": optimiser_s * 1000, "samples_per_s": batch / total})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 480])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--layouts", nargs="+", choices=["NCHW", "NHWC"], default=["NCHW", "NHWC"])
    parser.add_argument("--optimisers", nargs="+", choices=["foreach", "fused"], default=["foreach", "fused"])
    parser.add_argument("--repeats", type=int, default=1, help="run every configuration this many times, interleaved")
    parser.add_argument("--optimiser-ab", action="store_true",
                        help="instead: foreach vs fused AdamW in one process, models stepping in turn (NHWC)")
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/training.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        size, batch, channels_last, fused = json.loads(args.child)
        print("RESULT " + json.dumps(run_one(size, batch, args.steps, args.warmup, channels_last, "cpu", fused)))
        return 0
    if args.optimiser_ab:
        rows = [row for size in args.sizes for batch in args.batches
                for row in optimiser_ab(size, batch, max(args.steps, 5))]
        print("\nAdamW foreach vs fused, one process, NHWC, median step")
        print_table(rows, [("size", "size", ""), ("batch", "batch", ""), ("optimiser", "AdamW", ""),
                           ("s_per_step", "s/step", ".3f"), ("optimiser_ms", "optimiser ms", ".1f"),
                           ("samples_per_s", "samples/s", ".2f")])
        write_results("training-optimiser", {"rows": rows}, args.json)
        return 0
    rows = []
    configurations = [(size, batch, layout == "NHWC", optimiser == "fused") for size in args.sizes
                      for batch in args.batches for layout in args.layouts for optimiser in args.optimisers]
    for repeat in range(1, args.repeats + 1):
        for configuration in configurations:
            done = subprocess.run([sys.executable, "-m", "benchmarks.training", "--steps", str(args.steps),
                                   "--warmup", str(args.warmup), "--child", json.dumps(configuration)],
                                  check=True, capture_output=True, text=True)
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            rows.append({**json.loads(line[len("RESULT "):]), "repeat": repeat})
            row = rows[-1]
            print(f"  {row['size']}x{row['size']} batch {row['batch']} {row['layout']} {row['optimiser']}"
                  f" (repeat {repeat}): {row['samples_per_s']:.2f} samples/s", flush=True)
    print(f"\nTraining step (lsms, fp32, CPU, forward + loss + backward + AdamW), mean of {args.steps} steps")
    print_table(rows, [("size", "size", ""), ("batch", "batch", ""), ("layout", "layout", ""),
                       ("optimiser", "AdamW", ""), ("repeat", "repeat", ""),
                       ("s_per_step", "s/step", ".2f"), ("samples_per_s", "samples/s", ".2f"),
                       ("peak_rss_mb", "peak RSS MiB", ".0f"), ("rss_added_mb", "added by training MiB", ".0f")])
    write_results("training", {"steps": args.steps, "warmup": args.warmup, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
