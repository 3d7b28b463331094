"""Freed memory is kept for the next forward pass: no page faults in a warm CPU pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = """
import json, resource, threading, torch
from lsms_core.allocator import reuse_freed_memory
applied = reuse_freed_memory()
if not applied:  # the control: glibc's default 128 KiB mmap threshold, held fixed (mallopt disables its
    import ctypes  # dynamic rise, which otherwise comes at an unpredictable pass and can hide every fault)
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
from lsms_core.config import preset
from lsms_core.model import build_model
model = build_model(preset("lsms", text_dim=384)).eval().to(memory_format=torch.channels_last)
image = torch.randn(1, 3, 320, 320).contiguous(memory_format=torch.channels_last)
words, mask = torch.randn(1, 8, 384), torch.ones(1, 8)
faults = {}
def run(where):
    counts = []
    with torch.inference_mode():
        model(image, words, mask)  # warm
        for _ in range(3):  # steady state: the fewest faults of three warm passes
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model(image, words, mask)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    faults[where] = min(counts)
run("main")
worker = threading.Thread(target=run, args=("worker",))  # as the napari widget runs the model
worker.start(); worker.join()
print(json.dumps({"applied": applied, **faults}))
"""


def _faults(system_malloc: bool) -> dict:
    env = {**os.environ, "LSMS_NAPARI_SYSTEM_MALLOC": "1" if system_malloc else "0"}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_warm_forward_passes_reuse_memory_instead_of_faulting_it_in():
    tuned, system = _faults(system_malloc=False), _faults(system_malloc=True)
    assert tuned["applied"] is True and system["applied"] is False
    # The default allocator maps and unmaps the big maps every pass. Left to itself glibc raises its mmap
    # threshold at some pass (once a CI run measured 0 faults in the main thread), so the control holds the
    # default threshold fixed; the main thread's count shows that the measurement sees faults at all.
    assert system["main"] > 1000
    assert tuned["main"] < 100
    assert tuned["worker"] < 100  # one arena: the worker thread reuses the heap too
