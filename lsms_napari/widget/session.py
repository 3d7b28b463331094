"""Per-widget state, without Qt: the warm models (LSMS, and the prompt model once a click or box asks
for it), and the proposals they made.

Each proposal remembers the layer, slice and pixel content it was computed on, so a mask is never
saved against a different image, even if the user switched layers or slices meanwhile.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import numpy as np

from lsms_core.files import array_sha256
from lsms_core.follow import FollowResult
from lsms_core.inference import Segmenter
from lsms_core.prompt.combine import Click, PromptedMask, needs_prompt_model, prompted_mask
from lsms_core.selection import Matches
from lsms_core.windows import Window

LSMS_ENGINE = "LSMS"
PROMPT_ENGINE = "LiteMedSAM"


pixels_sha = array_sha256  # the core's one content hash: proposals are tied to their pixels by it


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
    """A model's mask, tied to the request that produced it.

    ``engine`` says what drew ``mask``: "LSMS" (the words), "LiteMedSAM" (clicks/boxes alone), "LSMS +
    clicks" (clicks chose among the text result's parts), "LSMS + LiteMedSAM" (clicks or boxes added the
    prompt model's outlines to a text result, or Refine redrew it). ``model`` is LSMS's identity for
    text results, the prompt model's for prompt-only ones; ``prompt_model`` the prompt model's when
    both took part; ``prompts`` the clicks and boxes; ``text_mask`` the words' own mask before clicks
    changed it (what a change of clicks starts again from); ``matches`` the slice's lesion candidates as
    the words rank them (lsms_core.selection.Matches; None without a lesion selector) and ``match`` the
    one shown: 0 the words' answer, n the n-th "next match"."""

    request: SegmentRequest
    mask: np.ndarray  # (H,W) bool, as proposed
    model: dict
    seconds: float
    image_sha: str
    notes: list[str] = field(default_factory=list)  # e.g. "cuda ran out of memory; ... on the CPU"
    engine: str = LSMS_ENGINE
    prompt_model: dict | None = None
    prompts: dict | None = None
    text_mask: np.ndarray | None = None
    matches: Matches | None = None
    match: int = 0

    def provenance_model(self) -> dict:
        """What the dataset's ``provenance.model`` records: the model's identity, the engine, which "next
        match" was taken (when not the answer), and, when prompts took part, the prompt model's identity and
        the prompts (docs/dataset-format.md)."""
        record = {**self.model, "engine": self.engine}
        if self.match:
            record["match"] = self.match
        if self.prompt_model is not None and self.prompt_model.get("sha256") != self.model.get("sha256"):
            record["prompt_model"] = dict(self.prompt_model)
        if self.prompts:
            record["prompts"] = self.prompts
        return record


@dataclass
class PromptRequest:
    """Clicks and boxes on one slice (H,W), in image pixels; ``text_mask`` the text result they act on
    (None: the prompts alone); ``window`` the CT window the user looks at (None for other images)."""

    pixels: np.ndarray
    hounsfield: bool
    window: Window | None
    clicks: list[Click]
    boxes: list[tuple[float, float, float, float]]
    text_mask: np.ndarray | None = None
    device: str = "auto"
    checkpoint: str = "default"  # the LSMS checkpoint that made text_mask: Refine uses the decoder made for it


@dataclass
class PromptResult:
    """What a PromptRequest gave: the mask, how it was made, the prompt model's identity (None when no
    call to it was needed), and the seconds from request to mask on the model thread."""

    request: PromptRequest
    prompted: PromptedMask
    prompt_model: dict | None
    seconds: float


@dataclass
class FollowRequest:
    """Follow through slices: the lesion of ``seed_mask`` (H,W) on slice ``seed_slice`` of ``volume``
    (Z,H,W, HU when ``hounsfield``), proposed on each neighbouring slice by ``engine``
    (lsms_core.follow_engines); ``text`` the expression (the "words" engine reads it); ``window`` the
    CT window (the "box" engine's input)."""

    volume: np.ndarray
    hounsfield: bool
    seed_slice: int
    seed_mask: np.ndarray
    text: str
    checkpoint: str = "default"
    device: str = "auto"
    engine: str = "lesions"
    window: Window | None = None


@dataclass
class FollowOutcome:
    """What following gave: the FollowResult, whether the volume's pixels hashed the same before and after
    the run (an image edited meanwhile gives no result), and the sha256 of the followed mask as uint8 (what
    tells a later edit apart). Both hashes are taken in the worker, not on the GUI thread."""

    result: FollowResult
    image_unchanged: bool
    mask_sha: str
    model: dict | None = None  # the identity of the model that proposed the slices (provenance of a save)
    volume_sha: str = ""  # pixels_sha of the volume followed (a save checks the image is still that one)


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


class _PredictionCache:
    """The prompt model's answers by (slice key, prompts), most recent ``limit`` kept: each change of the
    clicks runs all of a slice's prompts again, and all but the new one are answered from here."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def bound(self, segmenter):
        """``segmenter`` with its ``predict`` going through the cache (None stays None)."""
        return None if segmenter is None else SimpleNamespace(predict=partial(self.predict, segmenter))

    def predict(self, segmenter, points=None, labels=None, box=None):
        key = (segmenter.current_key, None if points is None else tuple(map(tuple, points)),
               None if labels is None else tuple(labels), None if box is None else tuple(box))
        if key not in self._items:
            self._items[key] = segmenter.predict(points=points, labels=labels, box=box)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        mask, probability = self._items[key]
        return mask.copy(), probability.copy()


class WidgetSession:
    """Keeps one Segmenter warm per (checkpoint, device) and the proposals (bounded, see Proposals).

    All model work (loading, segmenting) runs on one dedicated thread. PyTorch's CPU thread pool
    (OpenMP) keeps a team of threads per calling thread, and napari's workers come from a pool
    of threads: each would start its own team, and the teams compete for the cores (passes
    ~25-50 % slower on 2 cores, docs/benchmarks.md). napari's worker only waits for the result.
    """

    def __init__(self) -> None:
        self._segmenters: dict[tuple[str, str], Segmenter] = {}
        self._prompt_segmenter = None  # lsms_core.prompt.PromptSegmenter, loaded at the first click or box
        self._predictions = _PredictionCache()  # a click added re-runs the prompts: only the new one is predicted
        self.proposals = Proposals()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsms-model")
        # the graphs being built in the background (Segmenter / PromptSegmenter.compile_in_background)
        self.compiling: threading.Thread | None = None
        self.compiling_prompts: threading.Thread | None = None

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
            segmenter = Segmenter(checkpoint, device=device)
            # once per checkpoint on this machine: its ONNX graph is built meanwhile (lsms_core.compiled); the
            # calls run eager until it is there, then ~2x faster on the CPU (docs/benchmarks.md)
            self.compiling = segmenter.compile_in_background()
            self._segmenters[key] = segmenter
        return self._segmenters[key]

    def is_loaded(self, checkpoint: str, device: str) -> bool:
        return (str(checkpoint), str(device)) in self._segmenters

    def run(self, request: SegmentRequest) -> Proposal:
        """Load (if needed) and segment on the model thread; called from a napari worker."""
        return self._on_model_thread(self._run, request)

    def _run(self, request: SegmentRequest) -> Proposal:
        segmenter = self._load(str(request.checkpoint), str(request.device))
        result = segmenter.segment(request.pixels, request.text, hounsfield=request.hounsfield)
        return Proposal(request, result.mask, result.model, result.seconds, request.image_sha, list(result.notes),
                        matches=result.matches)

    @property
    def prompt_model_loaded(self) -> bool:
        return self._prompt_segmenter is not None

    def _load_prompt_model(self, device: str):
        """The warm prompt model (LiteMedSAM), loaded at first use; call it on the model thread."""
        from lsms_core.device import resolve_device
        from lsms_core.prompt import PromptSegmenter

        if self._prompt_segmenter is None:
            self._prompt_segmenter = PromptSegmenter(device=device)
            self.compiling_prompts = self._prompt_segmenter.compile_in_background()  # its encoder, once per machine
        elif self._prompt_segmenter.device != resolve_device(device):
            self._prompt_segmenter.to(device)
        return self._prompt_segmenter

    def prepare_prompts(self, request: PromptRequest) -> float:
        """Load the prompt model and encode the request's slice ahead of the first click (on the model
        thread); returns the seconds it took."""
        return self._on_model_thread(self._prepare_prompts, request)

    def _prepare_prompts(self, request: PromptRequest) -> float:
        start = time.perf_counter()
        self._load_prompt_model(request.device).set_image(request.pixels, request.hounsfield, request.window)
        return time.perf_counter() - start

    def run_prompts(self, request: PromptRequest) -> PromptResult:
        """The mask of clicks and boxes (on a text result or alone), on the model thread."""
        return self._on_model_thread(self._run_prompts, request)

    def _run_prompts(self, request: PromptRequest) -> PromptResult:
        start = time.perf_counter()
        shape = request.pixels.shape[-2:]
        segmenter = None
        # prompts alone always name LiteMedSAM as their engine; on a text result it loads only when needed
        if request.text_mask is None or needs_prompt_model(request.clicks, request.boxes, request.text_mask):
            segmenter = self._load_prompt_model(request.device)
            segmenter.set_image(request.pixels, request.hounsfield, request.window)  # cached per slice and window
        prompted = prompted_mask(self._predictions.bound(segmenter), shape, request.clicks, request.boxes,
                                 request.text_mask)
        identity = segmenter.identity if segmenter is not None else None
        return PromptResult(request, prompted, identity, time.perf_counter() - start)

    def refine(self, request: PromptRequest):
        """LSMS's mask ``request.text_mask`` redrawn by the prompt model (lsms_core.prompt.prompts.refine):
        (Refined, the prompt model's identity with Refine's decoder under "decoder", seconds), on the model
        thread."""
        return self._on_model_thread(self._refine, request)

    def _refine(self, request: PromptRequest):
        from lsms_core.prompt.prompts import refine
        from lsms_core.prompt.refine_decoder import refine_decoder_for

        start = time.perf_counter()
        segmenter = self._load_prompt_model(request.device)
        segmenter.use_refine_decoder(refine_decoder_for(request.checkpoint))
        segmenter.set_image(request.pixels, request.hounsfield, request.window)
        return refine(segmenter, request.text_mask), segmenter.refine_identity, time.perf_counter() - start

    def follow_steps(self, request: FollowRequest, cancel: threading.Event):
        """A generator for a napari worker: yields (slices done, slices expected) while the model thread
        follows the lesion (lsms_core.follow.follow_lesion), returns a FollowOutcome. Setting ``cancel``
        stops it after the slice in hand; the slices followed so far are kept."""
        before = pixels_sha(request.volume)
        updates: queue.SimpleQueue = queue.SimpleQueue()
        future = self._model_thread.submit(self._follow, request, cancel, updates.put)
        while not future.done():
            try:
                yield updates.get(timeout=0.05)
            except queue.Empty:
                pass
        result, model = future.result()
        return FollowOutcome(result, pixels_sha(request.volume) == before, pixels_sha(result.mask.astype(np.uint8)),
                             model, before)

    def _follow(self, request: FollowRequest, cancel: threading.Event, report):
        from lsms_core.follow import follow_lesion
        from lsms_core.follow_engines import make_proposer

        segmenter = prompt_segmenter = None
        if request.engine == "box":
            prompt_segmenter = self._load_prompt_model(request.device)
        else:
            segmenter = self._load(str(request.checkpoint), str(request.device))
        window = (request.window.center, request.window.width) if request.window is not None else None
        propose = make_proposer(request.engine, request.volume, request.hounsfield, segmenter, request.text,
                                prompt_segmenter, window)
        result = follow_lesion(request.volume.shape, request.seed_slice, request.seed_mask, propose,
                               progress=lambda done, expected: report((done, expected)), cancelled=cancel.is_set)
        model = (segmenter or prompt_segmenter).identity
        return result, {**model, "engine": f"follow: {request.engine}"}

    def close(self) -> None:
        """Let the model thread end once its current job is done (nothing new is started)."""
        self._model_thread.shutdown(wait=False, cancel_futures=True)
