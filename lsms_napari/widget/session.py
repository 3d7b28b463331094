"""Per-widget state, without Qt: the warm model, and the proposals the model made.

Each proposal remembers the layer, slice and pixel content it was computed on, so a mask is never
saved against a different image, even if the user switched layers or slices meanwhile.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lsms_core.inference import Segmenter


def pixels_sha(pixels: np.ndarray) -> str:
    array = np.ascontiguousarray(pixels)
    return hashlib.sha256(array.tobytes() + str(array.shape).encode() + str(array.dtype).encode()).hexdigest()


@dataclass
class SegmentRequest:
    """What Segment sends to the worker: one slice (H,W) and the expression."""

    pixels: np.ndarray
    text: str
    hounsfield: bool
    source_layer: str
    slice_index: int | None  # None for a 2-D layer
    attributes: dict = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    checkpoint: str = "default"
    device: str = "auto"

    @property
    def image_sha(self) -> str:
        return pixels_sha(self.pixels)


@dataclass
class Proposal:
    """A model's mask, tied to the request that produced it."""

    request: SegmentRequest
    mask: np.ndarray  # (H,W) bool, as proposed
    model: dict
    seconds: float
    image_sha: str
    notes: list[str] = field(default_factory=list)  # e.g. "cuda ran out of memory; ... on the CPU"


MAX_PROPOSALS = 32  # proposals kept (each holds its slice: 1 MB for 512x512 float32), most recently used


class Proposals:
    """The proposals by the key stored in their Labels layer's metadata, bounded: at most ``limit``,
    the least recently used dropped first, and those whose layer was closed dropped by ``keep_only``.
    Without a bound every Segment kept its slice (and mask) for the widget's lifetime."""

    def __init__(self, limit: int = MAX_PROPOSALS) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Proposal] = OrderedDict()

    def add(self, key: str, proposal: Proposal) -> None:
        self._items[key] = proposal
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, key: str | None) -> Proposal | None:
        """The proposal of ``key`` (marked as used), or None when unknown or dropped."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def keep_only(self, keys: Iterable[str | None]) -> None:
        """Drop every proposal whose key is not in ``keys`` (the keys of the Labels layers still open)."""
        alive = set(keys)
        for key in [k for k in self._items if k not in alive]:
            del self._items[key]

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class WidgetSession:
    """Keeps one Segmenter warm per (checkpoint, device) and the proposals (bounded, see Proposals).

    All model work (loading, segmenting) runs on one dedicated thread. PyTorch's CPU thread pool
    (OpenMP) keeps a team of threads per calling thread, and napari's workers come from a pool
    of threads: each would start its own team, and the teams compete for the cores (passes
    ~25-50 % slower on 2 cores, docs/benchmarks.md). napari's worker only waits for the result.
    """

    def __init__(self) -> None:
        self._segmenters: dict[tuple[str, str], Segmenter] = {}
        self.proposals = Proposals()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsms-model")

    def _on_model_thread(self, func, *args):
        if threading.current_thread().name.startswith("lsms-model"):
            return func(*args)
        return self._model_thread.submit(func, *args).result()

    def segmenter(self, checkpoint: str, device: str) -> Segmenter:
        """The warm Segmenter, loaded (on the model thread) if needed."""
        return self._on_model_thread(self._load, str(checkpoint), str(device))

    def _load(self, checkpoint: str, device: str) -> Segmenter:
        key = (checkpoint, device)
        if key not in self._segmenters:
            self._segmenters.clear()  # one model in memory at a time
            self._segmenters[key] = Segmenter(checkpoint, device=device)
        return self._segmenters[key]

    def is_loaded(self, checkpoint: str, device: str) -> bool:
        return (str(checkpoint), str(device)) in self._segmenters

    def run(self, request: SegmentRequest) -> Proposal:
        """Load (if needed) and segment on the model thread; called from a napari worker."""
        return self._on_model_thread(self._run, request)

    def _run(self, request: SegmentRequest) -> Proposal:
        segmenter = self._load(str(request.checkpoint), str(request.device))
        result = segmenter.segment(request.pixels, request.text, hounsfield=request.hounsfield)
        return Proposal(request, result.mask, result.model, result.seconds, request.image_sha, list(result.notes))

    def close(self) -> None:
        """Let the model thread end once its current job is done (nothing new is started)."""
        self._model_thread.shutdown(wait=False, cancel_futures=True)
