"""Model forward against peers: batch 1, fp32, CPU, interleaved in one process.

Rows: LSMS (default preset, eager: channels_last, squeeze before resize), the same through ONNX Runtime
(lsms_core.compiled, what ``Segmenter`` runs on the CPU once the graph is built), the same before this project's speed work (NCHW, the paper's resize-concat-squeeze order),
LSMS + encoding the expression with the real text encoder, LSMS text-free, ``lsms-budget``;
peers with random weights: a U-Net of the paper's Table II size (MONAI ``BasicUNet``,
features 64-128-256-512-256, 15.0 M params vs the table's 14.8 M), CLIPSeg (transformers,
default config: the referring-segmentation model a user could take instead; its forward
includes its own text transformer) and SegFormer-B0 (transformers default config). Each
conv peer runs in whichever memory format is faster for it here (picked by a short trial).

The process uses the allocator settings ``Segmenter`` applies (``lsms_core/allocator.py``), for
every model alike. Reported: median ms (and quartiles), params, MACs (FlopCounterMode), achieved GFLOP/s and its
share of a 2048x2048 fp32 matmul timed in the same rounds, and each model's time over LSMS's.

    .venv/bin/python -m benchmarks.forward [--sizes 480 224] [--runs 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from typing import Any

import torch

from .harness import (count_macs, interleaved, matmul_call, median_ms, params_m, print_table, spread_ms,
                      write_results)

TOKENS = 20
UNET_FEATURES = (64, 128, 256, 512, 256, 64)


class Candidate:
    """One model at one size: a zero-argument call plus what the table reports about it."""

    def __init__(self, name: str, call: Callable[[], Any], params: float | None, note: str = "",
                 macs_of: str | None = None) -> None:
        self.name, self.call, self.params, self.note = name, call, params, note
        self.macs_of = macs_of  # the row whose MACs it shares (a compiled graph FlopCounterMode cannot see into)


def _faster_layout(model: torch.nn.Module, image: torch.Tensor, forward: Callable) -> tuple[Callable, str]:
    """The call in NCHW or channels_last, whichever is faster over three runs each."""
    nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    nhwc_image = image.contiguous(memory_format=torch.channels_last)
    calls = {"NCHW": lambda: forward(model, image), "NHWC": lambda: forward(nhwc_model, nhwc_image)}
    times = interleaved(calls, runs=3)
    best = min(times, key=lambda k: median_ms(times[k]))
    return calls[best], best


def lsms_candidates(size: int, text_encoder) -> list[Candidate]:
    from lsms_core.config import preset
    from lsms_core.model import build_model

    torch.manual_seed(0)
    image = torch.randn(1, 3, size, size)
    nhwc = image.contiguous(memory_format=torch.channels_last)
    words, mask = torch.randn(1, TOKENS, 384), torch.ones(1, TOKENS)

    def build(name: str, use_text: bool = True, literal: bool = False, layout: str = "NHWC"):
        model = build_model(preset(name, use_text=use_text, text_dim=384)).eval()
        model.decode_head.literal_squeeze = literal
        if layout == "NHWC":
            model.to(memory_format=torch.channels_last)
        return model

    lsms, before = build("lsms"), build("lsms", literal=True, layout="NCHW")
    text_free, budget = build("lsms", use_text=False), build("lsms-budget")
    expression = "the larger hypodense lesion in segment VI of the liver, with an ill-defined boundary"
    rows = [
        Candidate("lsms", lambda: lsms(nhwc, words, mask), params_m(lsms) - params_m(lsms.sentence_proj),
                  "default preset, as Segmenter runs it"),
        Candidate("lsms before speed work", lambda: before(image, words, mask),
                  params_m(before) - params_m(before.sentence_proj), "NCHW, resize-concat-squeeze"),
        Candidate("lsms text-free", lambda: text_free(nhwc), params_m(text_free)),
        Candidate("lsms-budget", lambda: budget(nhwc, words, mask), params_m(budget) - params_m(budget.sentence_proj)),
    ]
    compiled = compiled_candidate(lsms, size, nhwc, words, mask)
    if compiled is not None:
        rows.insert(1, compiled)
    if text_encoder is not None:
        def with_text():
            encoded_words, encoded_mask = text_encoder.encode([expression], torch.device("cpu"))
            return lsms(nhwc, encoded_words, encoded_mask)

        rows.insert(1, Candidate("lsms + text encoding", with_text,
                                 params_m(lsms) - params_m(lsms.sentence_proj) + params_m(text_encoder),
                                 "+ all-MiniLM-L6-v2 on a 14-word expression"))
    return rows


def compiled_candidate(lsms, size: int, image, words, mask) -> Candidate | None:
    """The same LSMS through ONNX Runtime, as ``Segmenter`` runs it on the CPU (lsms_core.compiled), or None
    when ONNX Runtime or the exporter is not installed. The graph is built into a temporary folder."""
    import tempfile
    from pathlib import Path

    from lsms_core import compiled

    if not compiled.available(build=True):
        return None
    folder = Path(tempfile.mkdtemp(prefix="lsms-forward-"))
    graph = compiled.CompiledLSMS(lsms, compiled.export_onnx(lsms, size, folder / "lsms.onnx"))
    return Candidate("lsms compiled (ONNX Runtime)", lambda: graph(image, words, mask),
                     params_m(lsms) - params_m(lsms.sentence_proj), "as Segmenter runs it on the CPU", "lsms")


def peer_candidates(size: int) -> list[Candidate]:
    from monai.networks.nets import BasicUNet
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, SegformerConfig,
                              SegformerForSemanticSegmentation)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    image = torch.randn(1, 3, size, size)
    unet = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=UNET_FEATURES).eval()
    unet_call, unet_layout = _faster_layout(unet, image, lambda m, x: m(x))
    segformer = SegformerForSemanticSegmentation(SegformerConfig(num_labels=1)).eval()
    segformer_call, segformer_layout = _faster_layout(segformer, image, lambda m, x: m(pixel_values=x).logits)
    clipseg = CLIPSegForImageSegmentation(CLIPSegConfig()).eval()
    ids = torch.randint(1, clipseg.config.text_config.vocab_size - 1, (1, TOKENS))
    attention = torch.ones(1, TOKENS, dtype=torch.long)
    return [
        Candidate("U-Net (MONAI BasicUNet)", unet_call, params_m(unet), f"{unet_layout}"),
        Candidate("CLIPSeg", lambda: clipseg(input_ids=ids, attention_mask=attention, pixel_values=image,
                                             interpolate_pos_encoding=True).logits,
                  params_m(clipseg), "ViT-B/32 + CLIP text, incl. its text encoding"),
        Candidate("SegFormer-B0", segformer_call, params_m(segformer), f"{segformer_layout}"),
    ]


def run_size(size: int, runs: int, text_encoder, peers: bool) -> list[dict[str, Any]]:
    candidates = lsms_candidates(size, text_encoder) + (peer_candidates(size) if peers else [])
    matmul, matmul_flops = matmul_call()
    calls = {c.name: c.call for c in candidates} | {"matmul 2048": matmul}
    with torch.inference_mode():
        times = interleaved(calls, runs=runs, warmup=1)
        macs = {c.name: count_macs(c.call) for c in candidates if c.macs_of is None}
        macs |= {c.name: macs[c.macs_of] for c in candidates if c.macs_of is not None}
    matmul_gflops = matmul_flops / (median_ms(times["matmul 2048"]) / 1000) / 1e9
    reference = median_ms(times["lsms"])
    rows = []
    for c in candidates:
        ms = median_ms(times[c.name])
        low, high = spread_ms(times[c.name])
        gflops = 2 * macs[c.name] / (ms / 1000) / 1e9
        rows.append({"size": size, "model": c.name, "ms": ms, "ms_p25": low, "ms_p75": high,
                     "params_m": c.params, "gmacs": macs[c.name] / 1e9, "gflops": gflops,
                     "share_of_matmul": gflops / matmul_gflops, "vs_lsms": ms / reference, "note": c.note})
    rows.append({"size": size, "model": "matmul 2048x2048 fp32", "ms": median_ms(times["matmul 2048"]),
                 "gmacs": matmul_flops / 2e9, "gflops": matmul_gflops, "share_of_matmul": 1.0})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[480, 224])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-peers", action="store_true", help="LSMS rows only (no MONAI/transformers peers)")
    parser.add_argument("--no-text-encoder", action="store_true", help="skip the row that encodes text")
    parser.add_argument("--json", help="where to write the figures (default benchmarks/results/forward.json)")
    args = parser.parse_args(argv)
    from lsms_core.allocator import reuse_freed_memory

    # As Segmenter and the apps run; every model in this process gets the same allocator.
    allocator = "glibc tuned (lsms_core/allocator.py)" if reuse_freed_memory() else "system default"
    text_encoder = None
    if not args.no_text_encoder:
        from lsms_core.config import TextEncoderConfig
        from lsms_core.text_encoder import TextEncoder

        text_encoder = TextEncoder(TextEncoderConfig()).eval()
    rows = []
    for size in args.sizes:
        size_rows = run_size(size, args.runs, text_encoder, not args.no_peers)
        print(f"\nForward, batch 1, fp32, CPU, {size}x{size}, {torch.get_num_threads()} threads, "
              f"median of {args.runs} interleaved runs")
        print_table(size_rows, [("model", "model", ""), ("ms", "ms", ".1f"), ("ms_p25", "p25", ".1f"),
                                ("ms_p75", "p75", ".1f"), ("params_m", "params M", ".2f"),
                                ("gmacs", "GMACs", ".2f"), ("gflops", "GFLOP/s", ".1f"),
                                ("share_of_matmul", "of matmul", ".0%"), ("vs_lsms", "x lsms", ".2f"),
                                ("note", "note", "")])
        rows += size_rows
    write_results("forward", {"runs": args.runs, "allocator": allocator, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
