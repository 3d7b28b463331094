"""Training the lesion selector (``lsms-train-selector``) on a trained LSMS.

LSMS stays frozen. Per slice it runs once with "all lesions" (lsms_core.selection, exactly as
at inference); its candidates are matched to the slice's true lesion instances, and each
expression of the slice becomes a target over the candidates: 1 for those on the lesion(s) it
names, 0 for the others (all 0 for an expression of an absent lesion). The selector learns
from these with binary cross-entropy (and, with ``listwise``, a ranking term); expressions whose
lesion LSMS did not find teach nothing and are left out of training (they still count, as misses,
in validation). After each epoch the closest-match fallback is chosen on validation
(``calibrate_fallback``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lsms_core.checkpoint import read_checkpoint, save_checkpoint
from lsms_core.dataset import AnnotationDataset
from lsms_core.domain import domain_of_checkpoint
from lsms_core.metrics import Scores
from lsms_core.model import build_model
from lsms_core.preprocessing import to_model_input, to_unit_grey
from lsms_core.referring import ReferringScores, instance_map, named_instance, score_referring
from lsms_core.selection import (ALL_LESIONS_TEXT, GEOMETRY_FEATURES, HORIZONTAL_GEOMETRY, Candidates,
                                 accepted_candidates, describe_candidates, finder_pass)

from .data import TextFeatureCache, _swap_words

MATCH_SHARE = 0.3  # a candidate is on an instance when >= this share of its pixels lie on it
COVER_SHARE = 0.5  # an expression names an instance when its mask covers >= this share of it


@dataclass
class Expression:
    text: str
    target: torch.Tensor  # (K,) 1 for the candidates on the named lesion(s)
    mask: np.ndarray  # (H,W) bool, the annotation's own mask
    named: int | None  # the instance a referring case names (lsms_core.referring), else None
    found: bool  # False when it names lesions and no candidate lies on any of them


@dataclass
class SliceSamples:
    candidates: Candidates
    instances: np.ndarray
    expressions: list[Expression] = field(default_factory=list)


def _candidate_instances(candidates: Candidates, instances: np.ndarray) -> np.ndarray:
    """(K,) instance number each candidate lies on (0: on none)."""
    matched = np.zeros(candidates.count, dtype=np.int64)
    for k in range(candidates.count):
        under = instances[candidates.labels == k + 1]
        counts = np.bincount(under, minlength=int(instances.max()) + 1)
        counts[0] = 0
        if counts.max() >= MATCH_SHARE * len(under):
            matched[k] = int(counts.argmax())
    return matched


def _expressions(candidates: Candidates, instances: np.ndarray, records: list[dict],
                 masks: list[np.ndarray]) -> list[Expression]:
    """A target over ``candidates`` for each annotation of the slice."""
    on_instance = _candidate_instances(candidates, instances)
    sizes = np.bincount(instances.ravel(), minlength=int(instances.max()) + 1)
    expressions = []
    for record, mask in zip(records, masks):
        covered = np.bincount(instances[mask], minlength=len(sizes))
        named_set = {i for i in range(1, len(sizes)) if covered[i] >= COVER_SHARE * sizes[i]}
        target = torch.tensor([float(i in named_set) for i in on_instance])
        named = named_instance(mask, instances) if instances.max() >= 2 else None
        expressions.append(Expression(record["text"], target, mask, named,
                                      found=not named_set or bool(target.any())))
    return expressions


def slice_samples(model, prep, words_all, mask_all, dataset: AnnotationDataset, records: list[dict],
                  device: torch.device, thresholds: tuple[float, ...] = (0.5,)) -> list[SliceSamples]:
    """Candidates of one slice at each of ``thresholds`` (one finder pass) and a target over them for
    each of its annotations ``records``."""
    image = dataset.read_image(records[0])
    hounsfield = records[0]["units"] == "HU"
    model_input = to_model_input(image, prep, hounsfield)[None].to(device)
    with torch.inference_mode():
        probability, embedding = finder_pass(model, model_input, words_all, mask_all, image.shape)
    grey = to_unit_grey(image, prep, hounsfield)
    masks = [dataset.read_mask(r) > 0 for r in records]
    instances = instance_map(masks, [r.get("instance") for r in records])
    samples = []
    for threshold in thresholds:
        candidates = describe_candidates(probability, embedding, grey, threshold, model.config.selector_clusters)
        samples.append(SliceSamples(candidates, instances, _expressions(candidates, instances, records, masks)))
    return samples


def collect(model, prep, text_encoder, datasets: list[AnnotationDataset], split: str, device: torch.device,
            progress: bool = True, thresholds: tuple[float, ...] = (0.5,)) -> list[SliceSamples]:
    """SliceSamples for every slice of ``split`` in ``datasets``, one per candidate threshold."""
    words_all, mask_all = text_encoder.encode([ALL_LESIONS_TEXT], device)
    groups: list[tuple[AnnotationDataset, list[dict]]] = []
    for dataset in datasets:
        by_image: dict[str, list[dict]] = defaultdict(list)
        for record in dataset.select(split, expressions=True):
            by_image[record["image"]].append(record)
        groups += [(dataset, rs) for rs in by_image.values()]
    iterator = groups
    if progress:
        from tqdm import tqdm

        iterator = tqdm(groups, desc=f"candidates ({split})", unit="slice", leave=False, disable=None)
    return [samples for d, rs in iterator
            for samples in slice_samples(model, prep, words_all, mask_all, d, rs, device, thresholds)]


def mirrored(text: str) -> str:
    """The expression for the left-right mirrored slice ("left" and "right" swapped)."""
    return _swap_words(text, ("left", "right"))


def _batch(items: list[tuple[SliceSamples, Expression]], words: TextFeatureCache, flips: list[bool] | None = None):
    """Padded (B,K,F) features, (B,K) valid, (B,T,C_l) words, (B,T) word mask, (B,K) targets. ``flips`` mirrors
    chosen items left-right: their horizontal geometry changes sign and "left"/"right" swap."""
    width = max(max(s.candidates.count for s, _ in items), 1)
    dim = items[0][0].candidates.features.shape[1]
    features = torch.zeros(len(items), width, dim)
    valid = torch.zeros(len(items), width, dtype=torch.bool)
    target = torch.zeros(len(items), width)
    flips = flips or [False] * len(items)
    geometry = dim - GEOMETRY_FEATURES
    for row, (slice_, expression) in enumerate(items):
        count = slice_.candidates.count
        features[row, :count] = slice_.candidates.features
        if flips[row]:
            for column in HORIZONTAL_GEOMETRY:
                features[row, :count, geometry + column] *= -1
        valid[row, :count] = True
        target[row, :count] = expression.target
    text, word_mask = words.batch([mirrored(e.text) if flip else e.text for (_, e), flip in zip(items, flips)])
    return features, valid, text, word_mask, target


def selector_loss(logits: torch.Tensor, valid: torch.Tensor, target: torch.Tensor, listwise: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy over the real candidates, the named ones and the others averaged apart
    (one named lesion among ten must weigh as much as the nine it is not), then over the batch.

    ``listwise`` > 0 adds that weight times a ranking term for the rows that name a found lesion:
    -log of the softmax mass (over the slice's candidates) on the named candidates, so the named lesion
    must outscore every other candidate of its slice, which is what the closest match relies on."""
    safe = torch.where(valid, logits, torch.zeros_like(logits))
    per_candidate = F.binary_cross_entropy_with_logits(safe, target, reduction="none")
    positive, negative = target * valid, (1 - target) * valid
    loss = ((per_candidate * positive).sum(1) / positive.sum(1).clamp(min=1)
            + (per_candidate * negative).sum(1) / negative.sum(1).clamp(min=1)).mean()
    if listwise > 0:
        named = positive.sum(1) > 0  # only these rows: a row without candidates has no softmax
        if named.any():
            log_p = torch.log_softmax(logits[named].masked_fill(~valid[named], float("-inf")), dim=1)
            on_named = torch.logsumexp(log_p.masked_fill(positive[named] == 0, float("-inf")), dim=1)
            loss = loss - listwise * on_named.mean()
    return loss


@torch.no_grad()
def selection_logits(selector, slices: list[SliceSamples], words: TextFeatureCache) -> list[list[np.ndarray]]:
    """The selector's (K,) logits for each expression of each slice (empty arrays where K = 0)."""
    was_training = selector.training
    selector.eval()
    out = []
    for slice_ in slices:
        count = slice_.candidates.count
        valid = torch.ones(1, count, dtype=torch.bool)
        out.append([selector(slice_.candidates.features[None], valid, *words.batch([e.text]))[0].numpy()
                    if count else np.zeros(0, dtype=np.float32) for e in slice_.expressions])
    selector.train(was_training)
    return out


def score_selection(slices: list[SliceSamples], logits: list[list[np.ndarray]], fallback: float | None = None) -> dict:
    """Dice/IoU of the chosen union against each annotation's mask, and the referring figures, for the
    choices ``accepted_candidates(logits, fallback)`` makes."""
    scores, referring = Scores(), ReferringScores()
    for slice_, per_expression in zip(slices, logits):
        for expression, expression_logits in zip(slice_.expressions, per_expression):
            chosen = slice_.candidates.union(accepted_candidates(expression_logits, fallback))
            scores.add(chosen, expression.mask)
            if expression.named is not None:
                referring.add(score_referring(chosen, slice_.instances, expression.named))
    return {"dice": scores.dice, "miou": scores.miou, "n": scores.n, **referring.summary()}


def single_candidate_hits(slice_: SliceSamples, named: int) -> bool:
    """True when some one candidate of the slice, alone, is a hit on instance ``named``."""
    return any(score_referring(slice_.candidates.labels == k + 1, slice_.instances, named).hit
               for k in range(slice_.candidates.count))


def oracle_hit_rate(slices: list[SliceSamples]) -> float | None:
    """Share of the referring cases that some single candidate would hit: the selector's ceiling."""
    oracle = [single_candidate_hits(slice_, e.named)
              for slice_ in slices for e in slice_.expressions if e.named is not None]
    return float(np.mean(oracle)) if oracle else None


def evaluate_selection(selector, slices: list[SliceSamples], words: TextFeatureCache,
                       fallback: float | None = None) -> dict:
    """Dice/IoU of the chosen union against each annotation's mask, the referring figures, and the
    best single candidate's hit rate (``oracle_hit_rate``)."""
    return {**score_selection(slices, selection_logits(selector, slices, words), fallback),
            "oracle_hit_rate": oracle_hit_rate(slices)}


# The fallbacks lsms-train-selector tries on validation (selector_fallback; None: a rejected slice keeps nothing).
FALLBACK_GRID = (None, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -10.0, -12.0, -15.0, -20.0, -30.0)


def calibration_score(figures: dict) -> float:
    """What a run maximises on validation: Dice + hit rate (Dice alone without referring cases), so
    neither marking every lesion nor answering only the easy cases wins."""
    return figures["dice"] + (figures["hit_rate"] if figures.get("n_referring") else 0.0)


def calibrate_fallback(slices: list[SliceSamples], logits: list[list[np.ndarray]],
                       grid: tuple[float | None, ...] = FALLBACK_GRID) -> tuple[float | None, list[dict]]:
    """The ``selector_fallback`` of ``grid`` with the highest ``calibration_score`` on ``slices`` (the
    earlier, more cautious one on a tie) and every candidate's figures."""
    table = [{"fallback": fallback, **score_selection(slices, logits, fallback)} for fallback in grid]
    best = max(range(len(table)), key=lambda i: (calibration_score(table[i]), -i))
    return grid[best], table


def fit_selector(selector, items: list[tuple[SliceSamples, Expression]], words: TextFeatureCache, epochs: int,
                 batch_size: int, lr: float, weight_decay: float, flip: bool, rng: random.Random,
                 after_epoch: Callable[[int, float], None] | None = None, listwise: float = 0.0) -> None:
    """AdamW with a one-cycle schedule on ``items`` (slice, expression) pairs, shuffled by ``rng``;
    ``flip`` mirrors half of each batch left-right; ``listwise`` weighs ``selector_loss``'s ranking term.
    ``after_epoch(epoch, mean training loss)``."""
    for parameter in selector.parameters():
        parameter.requires_grad_(True)
    selector.train()
    items = list(items)
    optimiser = torch.optim.AdamW(selector.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(items) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    for epoch in range(1, epochs + 1):
        rng.shuffle(items)
        total = 0.0
        for begin in range(0, len(items), batch_size):
            chunk = items[begin:begin + batch_size]
            flips = [flip and rng.random() < 0.5 for _ in chunk]
            features, valid, text, word_mask, target = _batch(chunk, words, flips)
            if hasattr(selector, "member_logits"):  # an ensemble: each member learns from its own loss
                members = selector.member_logits(features, valid, text, word_mask)
                loss = torch.stack([selector_loss(logits, valid, target, listwise) for logits in members]).mean()
            else:
                loss = selector_loss(selector(features, valid, text, word_mask), valid, target, listwise)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the selector's loss became {float(loss)} in epoch {epoch}: lower --lr")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(target)
        if after_epoch is not None:
            after_epoch(epoch, total / len(items))


def train_selector(checkpoint: str, datasets: list[str], output: str, epochs: int = 30, batch_size: int = 64,
                   lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0, device: str = "cpu",
                   model_name: str = "lsms", half: bool = False, progress: bool = True, flip: bool = True,
                   features: str = "geometry", thresholds: tuple[float, ...] = (0.5,), kind: str = "film",
                   layers: int = 2, members: int = 1, clusters: bool = False,
                   fallback: float | str | None = "auto", listwise: float = 0.0) -> dict:
    """Train a selector on the frozen LSMS of ``checkpoint``; write ``best``/``last`` checkpoints (LSMS +
    selector) and ``log.jsonl`` into ``output``. Returns the end record.

    ``thresholds``: the training slices' candidates are cut from the finder's probability at each of
    these (one more training slice per threshold), so the selector also sees the split and merged
    candidates a finder makes on slices it was not trained on; validation uses 0.5, as inference does.
    ``fallback``: the checkpoints' ``selector_fallback``; "auto" chooses it on validation after each
    epoch (``calibrate_fallback``; None when there is no validation split). ``listwise``: the weight of
    ``selector_loss``'s ranking term."""
    from lsms_core.text_encoder import TextEncoder

    torch.manual_seed(seed)
    rng = random.Random(seed)
    run = Path(output)
    run.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(device)
    base = read_checkpoint(checkpoint)
    domain = domain_of_checkpoint(base.config, base.extra)  # the finder's: the selector adds no new images
    model_config = dataclasses.replace(base.config.model, select_lesions=True, selector_features=features,
                                       selector_kind=kind, selector_layers=layers,
                                       selector_members=members, selector_clusters=clusters).validate()
    config = base.config.replace(model=model_config, preset=base.config.preset.removesuffix("+select") + "+select")
    model = build_model(model_config)
    lsms_state = {k: v for k, v in base.model_state.items() if not k.startswith("selector.")}  # a new selector
    result = model.load_state_dict(lsms_state, strict=False)
    if result.unexpected_keys or any(not k.startswith("selector.") for k in result.missing_keys):
        raise ValueError(f"{checkpoint}: weights do not fit ({result.unexpected_keys[:3]}, {result.missing_keys[:3]})")
    model.to(torch_device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    text_encoder = TextEncoder(base.config.text).to(torch_device).eval()
    opened = [AnnotationDataset.open(path) for path in datasets]
    start = time.perf_counter()
    train = collect(model, base.config.preprocess, text_encoder, opened, "train", torch_device, progress, thresholds)
    val = collect(model, base.config.preprocess, text_encoder, opened, "val", torch_device, progress)
    words = TextFeatureCache(text_encoder, torch_device)
    texts = [e.text for s in train + val for e in s.expressions]
    words.prefill(texts + [mirrored(t) for t in texts] if flip else texts)
    items = [(s, e) for s in train for e in s.expressions if e.found]
    if not items:
        raise ValueError("no training expression whose lesion LSMS finds: is the checkpoint trained?")
    selector = model.selector
    log = run / "log.jsonl"
    prepared = {"event": "start", "checkpoint": str(checkpoint), "datasets": datasets, "epochs": epochs, "flip": flip,
                "features": features, "kind": kind, "fallback": fallback, "listwise": listwise, "layers": layers, "members": members, "clusters": clusters,
                "thresholds": list(thresholds),
                "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
                "train_slices": len(train), "train_expressions": len(items),
                "train_missed": sum(not e.found for s in train for e in s.expressions),
                "val_slices": len(val), "candidate_seconds": round(time.perf_counter() - start, 1)}
    with open(log, "w") as handle:
        handle.write(json.dumps(prepared) + "\n")
    best, best_epoch = -math.inf, 0
    oracle = oracle_hit_rate(val)

    def after_epoch(epoch: int, train_loss: float) -> None:
        nonlocal best, best_epoch
        chosen, table = (None if fallback == "auto" else fallback), []
        figures = {}
        if val:
            logits = selection_logits(selector, val, words)
            if fallback == "auto":
                chosen, table = calibrate_fallback(val, logits)
            figures = {**score_selection(val, logits, chosen), "oracle_hit_rate": oracle}
        record = {"event": "epoch", "epoch": epoch, "train_loss": round(train_loss, 5), "fallback": chosen,
                  **{f"val_{k}": (round(v, 5) if isinstance(v, float) else v) for k, v in figures.items()}}
        if table:
            record["fallback_table"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                         if k in ("fallback", "dice", "hit_rate", "leak")} for row in table]
        score = calibration_score(figures) if val else -train_loss
        extra = {"name": model_name, "epoch": epoch, "selector": {k: v for k, v in prepared.items() if k != "event"},
                 "base": base.identity, "val": figures, "domain": domain.to_record()}
        epoch_config = config.replace(model=dataclasses.replace(model_config, selector_fallback=chosen).validate())
        model.to("cpu")
        if score > best:
            best, best_epoch = score, epoch
            save_checkpoint(run / "best.safetensors", model, epoch_config, None, extra, half=half)
        save_checkpoint(run / "last.safetensors", model, epoch_config, None, extra, half=half)
        model.to(torch_device)
        with open(log, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if progress:
            print(json.dumps(record), flush=True)

    fit_selector(selector, items, words, epochs, batch_size, lr, weight_decay, flip, rng, after_epoch, listwise)
    end = {"event": "end", "best_epoch": best_epoch, "seconds": round(time.perf_counter() - start, 1)}
    with open(log, "a") as handle:
        handle.write(json.dumps(end) + "\n")
    return end


def calibrate_selector(checkpoint: str, datasets: list[str], output: str, device: str = "cpu", half: bool = False,
                       progress: bool = True) -> dict:
    """Choose a trained selector's ``selector_fallback`` on the validation splits of ``datasets``
    (``calibrate_fallback``) without training it; write ``calibrated.safetensors`` (the same weights)
    and ``log.jsonl`` (every candidate's figures) into ``output``. Returns the calibration record."""
    from lsms_core.text_encoder import TextEncoder

    run = Path(output)
    run.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(device)
    base = read_checkpoint(checkpoint)
    if not base.config.model.select_lesions:
        raise ValueError(f"{checkpoint} has no lesion selector to calibrate: train one with lsms-train-selector")
    model = build_model(base.config.model)
    model.load_state_dict(base.model_state)
    model.to(torch_device).eval()
    text_encoder = TextEncoder(base.config.text).to(torch_device).eval()
    start = time.perf_counter()
    val = collect(model, base.config.preprocess, text_encoder, [AnnotationDataset.open(p) for p in datasets], "val",
                  torch_device, progress)
    if not val:
        raise ValueError("the datasets have no validation split to calibrate on")
    words = TextFeatureCache(text_encoder, torch_device)
    words.prefill([e.text for s in val for e in s.expressions])
    chosen, table = calibrate_fallback(val, selection_logits(model.selector, val, words))
    config = base.config.replace(model=dataclasses.replace(base.config.model, selector_fallback=chosen).validate())
    record = {"event": "calibration", "checkpoint": str(checkpoint), "datasets": datasets, "val_slices": len(val),
              "fallback": chosen, "before": base.config.model.selector_fallback,
              "table": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in table],
              "seconds": round(time.perf_counter() - start, 1)}
    extra = {**base.extra, "calibration": {k: record[k] for k in ("datasets", "fallback", "before")},
             "val": {**next(row for row in table if row["fallback"] == chosen), "oracle_hit_rate": oracle_hit_rate(val)}}
    model.to("cpu")
    save_checkpoint(run / "calibrated.safetensors", model, config, None, extra, half=half)
    with open(run / "log.jsonl", "w") as handle:
        handle.write(json.dumps(record) + "\n")
    return record
