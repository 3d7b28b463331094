"""GPU: forward throughput (batch 1 and 16) and training samples/s at 480x480, one prepared run.

Forward: the default ``lsms`` preset in bf16 autocast (fp16 where bf16 is unsupported), NCHW
vs channels_last, cudnn.benchmark off vs on, and optionally ``torch.compile``; images/s from
CUDA-synchronised timings, medians of interleaved rounds. Training: forward + full loss +
backward + AdamW at batch 16 in autocast, samples/s and peak memory
(``torch.cuda.max_memory_allocated``). Without CUDA it says so and measures nothing (``--device
cpu`` runs the same code small, to check the script itself).

    .venv/bin/python -m benchmarks.gpu [--size 480] [--rounds 10] [--compile] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time

from .harness import lsms_model, median_ms, print_table, random_batch, write_results


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_rows(device, size: int, rounds: int, compile_model: bool) -> list[dict]:
    import torch

    from lsms_core.device import autocast

    variants = []
    for channels_last in (False, True):
        for benchmark in (False, True):
            variants.append((f"{'NHWC' if channels_last else 'NCHW'}, cudnn.benchmark {'on' if benchmark else 'off'}",
                             channels_last, benchmark, False))
    if compile_model:
        variants.append(("NHWC, cudnn.benchmark on, torch.compile", True, True, True))
    rows = []
    for batch in (1, 16):
        for name, channels_last, benchmark, compiled in variants:
            torch.backends.cudnn.benchmark = benchmark
            model = lsms_model(device, channels_last).eval()
            run = torch.compile(model) if compiled else model
            image, words, mask = random_batch(device, batch, size, channels_last)
            times = []
            with torch.inference_mode(), autocast(device):
                for i in range(rounds + 3):  # 3 warm-up calls (cudnn autotuning, compilation)
                    _sync(device)
                    start = time.perf_counter()
                    run(image, words, mask)
                    _sync(device)
                    if i >= 3:
                        times.append(time.perf_counter() - start)
            ms = median_ms(times)
            rows.append({"what": f"forward batch {batch}, {name}", "ms": ms, "images_per_s": batch / (ms / 1000)})
            del model, run
    torch.backends.cudnn.benchmark = False
    return rows


def training_row(device, size: int, batch: int, steps: int, channels_last: bool) -> dict:
    import torch

    from lsms_core.device import autocast, autocast_dtype
    from lsms_core.losses import LossConfig, LSMSLoss

    torch.backends.cudnn.benchmark = True
    model = lsms_model(device, channels_last, train=True)
    loss = LSMSLoss(LossConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype(device) == torch.float16 else None
    image, words, mask = random_batch(device, batch, size, channels_last)
    target = torch.zeros(batch, 1, size, size, device=device)
    target[:, :, size // 4: size // 2, size // 3: size // 2] = 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with autocast(device):
            output = model(image, words, mask, features=True)
        terms = loss(output, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(terms["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            terms["total"].backward()
            optimizer.step()

    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return {"what": f"training batch {batch}, {'NHWC' if channels_last else 'NCHW'}, autocast",
            "ms": 1000 * seconds, "images_per_s": batch / seconds, "peak_gpu_mb": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/gpu.json)")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA device here: nothing measured (run this on a machine with a GPU).")
        write_results("gpu", {"measured": False, "reason": "no CUDA device"}, args.json)
        return 0
    rows = forward_rows(device, args.size, args.rounds, args.compile)
    for channels_last in (False, True):
        rows.append(training_row(device, args.size, args.train_batch, args.train_steps, channels_last))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}, lsms preset, {args.size}x{args.size}, autocast {'bf16/fp16' if device.type == 'cuda' else 'off'}")
    print_table(rows, [("what", "what", ""), ("ms", "ms", ".2f"), ("images_per_s", "images/s", ".1f"),
                       ("peak_gpu_mb", "peak GPU MiB", ".0f")])
    write_results("gpu", {"measured": True, "device": name, "size": args.size, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
