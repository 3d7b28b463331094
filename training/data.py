"""Training samples: dataset annotations -> (image, target, text), through lsms_core's one preprocessing.

Images are preprocessed once and cached in memory as grey (1,S,S) in [0,1] (many annotations
share a slice); normalisation to the model's 3-channel input happens per batch.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import random
import re
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lsms_core.config import PreprocessConfig
from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.preprocessing import normalise as _normalise
from lsms_core.preprocessing import resize_grey, to_model_target, to_unit_grey
from lsms_core.selection import ALL_LESIONS_TEXT

NEUTRAL_TEXT = "a lesion"  # what lsms-eval --text-mode neutral gives the model instead of the words
_SWAPS = {"horizontal": ("left", "right"), "vertical": ("upper", "lower")}


def open_training_dataset(path: str | os.PathLike) -> AnnotationDataset:
    """A dataset folder, or an LViT-layout folder imported on the fly into a temporary dataset."""
    path = Path(path)
    if (path / "dataset.json").is_file():
        return AnnotationDataset.open(path)
    if any((path / f"{split}_Folder").is_dir() for split in ("Train", "Val", "Test")):
        from lsms_core.dataset.lvit import import_lvit

        copy = Path(tempfile.mkdtemp(prefix="lsms-lvit-"))
        atexit.register(shutil.rmtree, copy, ignore_errors=True)  # the imported copy goes with the process
        return import_lvit(path, copy / "dataset")
    raise DatasetError(f"{path} is neither a dataset (dataset.json) nor an LViT layout (Train_Folder ...)")


def empty_split_message(datasets: list[AnnotationDataset], split: str | None, kinds: tuple[str, ...] = ()) -> str:
    """Why there is nothing to use in ``split``, what the datasets do hold, and what to do."""
    which = f" of kinds {', '.join(kinds)}" if kinds else ""
    records = [r for d in datasets for r in d.select(None)]
    held = ", ".join(f"{name} {sum(r.get('split') == name for r in records)}" for name in ("train", "val", "test"))
    patients = ", ".join(f"{name} {len({r.get('patient_key') for r in records if r.get('split') == name})}"
                         for name in ("train", "val", "test"))
    root = datasets[0].root
    if not records:
        advice = "the dataset holds no annotations yet: save some first (the widget's Save annotation)"
    elif kinds:
        advice = "annotate expressions of those kinds, or train without --expression-kinds"
    else:
        groups = sorted({r.get("split_group") for r in records if isinstance(r.get("split_group"), str)})
        example = groups[0] if groups else "GROUP"
        advice = (f"move a patient's group there with 'lsms-data set-split {root} {example} {split}' (groups: "
                  f"{', '.join(groups[:5])}{' ...' if len(groups) > 5 else ''}), or annotate more patients (a new "
                  "patient's split is drawn by split_fractions in dataset.json)")
    return (f"{root} has no annotations{which} in split {split!r} (annotations per split: {held}; patients: "
            f"{patients}): {advice}")


def grey_from_model_input(model_input: torch.Tensor, prep: PreprocessConfig) -> torch.Tensor:
    """Invert the normalisation of ``to_model_input`` on channel 0: (3,S,S) -> grey (1,S,S) in [0,1].
    Not used to build samples (they cache ``resize_grey(to_unit_grey(...))`` directly)."""
    return model_input[:1] * prep.std[0] + prep.mean[0]


def normalise(grey: torch.Tensor, prep: PreprocessConfig) -> torch.Tensor:
    """Grey (B,1,S,S) in [0,1] -> model input (B,3,S,S): lsms_core.preprocessing.normalise, the step
    ``to_model_input`` ends with."""
    return _normalise(grey, prep)


@dataclass
class Sample:
    grey: torch.Tensor  # (1,S,S) in [0,1]
    target: torch.Tensor  # (1,S,S) in {0,1}
    text: str
    index: int


class BoundedCache:
    """Least-recently-used tensors up to ``max_bytes`` (small datasets stay wholly in memory,
    large ones do not exhaust it)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0

    def get(self, key, make) -> torch.Tensor:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()
        return value


class ReferringSamples(torch.utils.data.Dataset):
    """The annotations of one split of one or more datasets as model-ready samples (cached,
    optionally augmented).

    ``dataset`` may be a list: the first is the main dataset, the others are mixed in (e.g.
    synthetic referring data, ``lsms-train --mix``). Preprocessed slices (shared by their
    annotations) and targets are kept in a bounded cache: ``cache_bytes`` (default 2 GiB) for each.

    ``finder``: one sample per slice instead of one per annotation, with the text "all lesions" and the
    union of the slice's masks: what the LSMS of a model with a lesion selector (the lesion finder) is
    asked at inference. Its record is the slice's first, with that text and a "union_of" list.
    """

    def __init__(self, dataset: AnnotationDataset | list[AnnotationDataset], split: str | None,
                 prep: PreprocessConfig, augment: bool = False, seed: int = 0, cache_bytes: int = 2 << 30,
                 kinds: tuple[str, ...] = (), finder: bool = False, vertical_flips: bool = True,
                 neutral_share: float = 0.0) -> None:
        self.datasets = list(dataset) if isinstance(dataset, (list, tuple)) else [dataset]
        self.dataset = self.datasets[0]
        self.records: list[dict] = []
        self.record_source: list[int] = []  # index into self.datasets, per record
        for number, source in enumerate(self.datasets):
            chosen = source.select(split, expressions=not finder)
            if kinds:  # only expressions of these kinds (e.g. "count": all lesions, the only lesion)
                chosen = [r for r in chosen if set(r.get("expression_kinds") or ()) & set(kinds)]
            if finder:
                chosen = _finder_records(chosen)
            self.records += chosen
            self.record_source += [number] * len(chosen)
        if not self.records:
            raise DatasetError(empty_split_message(self.datasets, split, kinds))
        self.prep = prep
        self.augment = augment
        self.vertical_flips = vertical_flips
        self.neutral_share = neutral_share
        self.seed = seed
        self._grey = BoundedCache(cache_bytes)
        self._targets = BoundedCache(cache_bytes)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def source_of(self, index: int) -> AnnotationDataset:
        return self.datasets[self.record_source[index]]

    def read_mask(self, index: int) -> np.ndarray:
        """The annotation's mask at its image's own size (H,W) (a finder sample's: the union)."""
        source, record = self.source_of(index), self.records[index]
        if "union_of" not in record:
            return source.read_mask(record)
        masks = [source.read_mask(r) > 0 for r in record["union_of"]]
        return np.logical_or.reduce(masks).astype(np.uint8)

    def grey(self, record: dict, index: int | None = None) -> torch.Tensor:
        source = self.dataset if index is None else self.source_of(index)

        def make() -> torch.Tensor:
            grey = to_unit_grey(source.read_image(record), self.prep, record["units"] == "HU")
            return resize_grey(grey, self.prep.image_size)  # to_model_input's first two steps

        return self._grey.get(record["image"], make)  # image names are content hashes: shared safely

    def target(self, index: int) -> torch.Tensor:
        return self._targets.get(index, lambda: to_model_target(self.read_mask(index), self.prep.image_size))

    def slice_groups(self) -> list[list[tuple[int, object]]]:
        """Per slice, its records as (index, target key): the key is the stored ``instance`` number,
        or the mask's content when the record has none, so two records with different keys
        outline different things. Used to batch several expressions of one slice together."""
        by_slice: dict[tuple[int, str], list[tuple[int, object]]] = {}
        for index, record in enumerate(self.records):
            if record.get("instance") is not None:
                key: object = ("instance", record["instance"])
            else:
                key = ("mask", hashlib.sha1(np.packbits(self.read_mask(index) > 0).tobytes()).hexdigest())
            by_slice.setdefault((self.record_source[index], record["image"]), []).append((index, key))
        return list(by_slice.values())

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        grey, target, text = self.grey(record, index), self.target(index), record["text"]
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
        if self.neutral_share and record.get("instance") is None \
                and float(torch.rand((), generator=generator)) < self.neutral_share:
            text = NEUTRAL_TEXT
        if self.augment:
            grey, target, text = augment_sample(grey, target, text, generator, self.vertical_flips)
        return Sample(grey, target, text, index)


def _finder_records(records: list[dict]) -> list[dict]:
    """One "all lesions" record per slice of ``records``, holding the slice's records in "union_of"."""
    by_image: dict[str, list[dict]] = {}
    for record in records:
        by_image.setdefault(record["image"], []).append(record)
    return [{**group[0], "text": ALL_LESIONS_TEXT, "expression_kinds": ["count"], "instance": None,
             "union_of": group} for group in by_image.values()]


def _swap_words(text: str, pair: tuple[str, str]) -> str:
    a, b = pair
    return re.sub(rf"\b({a}|{b})\b", lambda m: b if m.group(1) == a else a, text)


def augment_sample(grey: torch.Tensor, target: torch.Tensor, text: str, generator: torch.Generator,
                   vertical_flips: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Flips that keep the text true (left<->right, upper<->lower swapped in it), a small random
    zoom/shift, and brightness/contrast jitter. No rotations: they would change 'upper'.
    ``vertical_flips`` False: no upside-down images (a chest radiograph never comes that way)."""
    rand = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    if rand() < 0.5:
        grey, target, text = grey.flip(-1), target.flip(-1), _swap_words(text, _SWAPS["horizontal"])
    if rand() < 0.5 and vertical_flips:
        grey, target, text = grey.flip(-2), target.flip(-2), _swap_words(text, _SWAPS["vertical"])
    scale = 1.0 + 0.2 * (rand() - 0.5)
    shift = [0.1 * (rand() - 0.5), 0.1 * (rand() - 0.5)]
    theta = torch.tensor([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]]).unsqueeze(0)
    grid = F.affine_grid(theta, (1, 1, *grey.shape[-2:]), align_corners=False)
    grey = F.grid_sample(grey[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    target = (F.grid_sample(target[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0] > 0.5).float()
    contrast, brightness = 1.0 + 0.2 * (rand() - 0.5), 0.1 * (rand() - 0.5)
    grey = ((grey - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    return grey, target, text


class TextFeatureCache:
    """Word features of a frozen text encoder, computed once per distinct expression (by the encoder on
    ``device``) and kept on the CPU."""

    def __init__(self, encoder, device: torch.device | str = "cpu") -> None:
        self.encoder, self.device = encoder, device
        self._features: dict[str, torch.Tensor] = {}

    def prefill(self, texts: list[str], batch_size: int = 64) -> None:
        missing = sorted(set(texts) - set(self._features))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            with torch.inference_mode():
                words, mask = self.encoder.encode(chunk, self.device)
            for i, text in enumerate(chunk):
                self._features[text] = words[i, : int(mask[i].sum())].float().cpu().clone()

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,T,C_l) features padded to the longest, and the (B,T) mask."""
        self.prefill(texts)
        rows = [self._features[t] for t in texts]
        length = max(r.shape[0] for r in rows)
        words = torch.zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length)
        for i, row in enumerate(rows):
            words[i, : row.shape[0]] = row
            mask[i, : row.shape[0]] = 1
        return words, mask


def collate(samples: list[Sample]) -> dict:
    return {"grey": torch.stack([s.grey for s in samples]), "target": torch.stack([s.target for s in samples]),
            "text": [s.text for s in samples], "index": [s.index for s in samples]}


def epoch_order(size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's sample indices for one epoch, from torch's DistributedSampler (seeded shuffle,
    padded to divide evenly across ranks); the same list on every run, so a resumed epoch can
    skip exactly the batches already done."""
    sampler = torch.utils.data.DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True,
                                                  seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def grouped_epoch_order(slices: list[list[tuple[int, object]]], per_slice: int, batch_size: int, epoch: int,
                        seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's sample indices for one epoch, in runs of ``per_slice`` expressions of one slice
    with *different* targets where the slice has them, so a batch holds the same image with
    different answers and the loss can only fall by reading the words.

    ``slices`` is ``ReferringSamples.slice_groups()``. Every sample appears once per epoch;
    the order depends only on (seed, epoch), so a resumed epoch skips exactly what was done.
    Ranks take interleaved ``batch_size`` chunks (the last global batch is padded by wrapping).
    """
    rng = random.Random(f"{seed}:{epoch}")
    runs: list[list[int]] = []
    for records in slices:
        buckets: dict[object, list[int]] = {}
        for index, key in records:
            buckets.setdefault(key, []).append(index)
        queues = list(buckets.values())
        for queue in queues:
            rng.shuffle(queue)
        rng.shuffle(queues)
        interleaved: list[int] = []  # round-robin over targets: neighbours differ while targets last
        while any(queues):
            for queue in queues:
                if queue:
                    interleaved.append(queue.pop())
        runs += [interleaved[i:i + per_slice] for i in range(0, len(interleaved), per_slice)]
    rng.shuffle(runs)
    flat = [index for run in runs for index in run]
    span = batch_size * world
    if world > 1 and len(flat) % span:
        flat += flat[: span - len(flat) % span]
    return [index for start in range(0, len(flat), span)
            for index in flat[start + rank * batch_size: start + (rank + 1) * batch_size]]
