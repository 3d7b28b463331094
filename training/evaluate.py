"""Evaluation: mean per-image Dice, mIoU and boundary F1 of a checkpoint on one split, and the
referring figures (hit rate, pointing, leak: lsms_core.referring), overall and per expression kind,
through the same warm inference path as the CLI and the widget. ``score_split`` is the loop, shared
with the prompt-model modes (training/prompt_eval.py)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import numpy as np

from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.inference import ExpressionError, Segmenter
from lsms_core.preprocessing import ImageError
from lsms_core.metrics import Scores, boundary_f1
from lsms_core.referring import ReferringScores, referring_instances, score_referring

from .data import NEUTRAL_TEXT

TEXT_MODES = ("as-is", "neutral")


def evaluate(checkpoint: str, dataset_dir: str, split: str = "test", text_mode: str = "as-is",
             device: str = "auto", progress: bool = False, segmenter: Segmenter | None = None) -> dict:
    """Scores of ``checkpoint`` on ``split``. text_mode ``neutral`` replaces every expression with
    "a lesion", which shows how much the model relies on the language."""
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text mode must be one of {TEXT_MODES}, got {text_mode!r}")
    split_records(dataset_dir, split)  # a bad dataset is reported before a model is loaded
    segmenter = segmenter or Segmenter(checkpoint, device=device)

    def predict(record: dict, image: np.ndarray, target: np.ndarray) -> np.ndarray:
        return segmenter.segment(image, expression(record, text_mode), hounsfield=record["units"] == "HU").mask

    report = score_split(dataset_dir, split, predict, progress=progress)
    return {**report, "text_mode": text_mode, "model": segmenter.identity, "device": str(segmenter.device)}


def expression(record: dict, text_mode: str) -> str:
    """The text LSMS is given for ``record``: as written, or "a lesion" (``neutral``)."""
    return record["text"] if text_mode == "as-is" else NEUTRAL_TEXT


def split_records(dataset_dir: str, split: str) -> tuple[AnnotationDataset, list[dict]]:
    """The dataset and its records of ``split``; DatasetError naming a bad line, ValueError when none."""
    dataset = AnnotationDataset.open(dataset_dir)
    records = dataset.select(split, expressions=True)
    if not records:
        raise ValueError(f"{dataset_dir} has no annotations in split {split!r}")
    return dataset, records


Predict = Callable[[dict, np.ndarray, np.ndarray], np.ndarray]


def score_split(dataset_dir: str, split: str, predict: Predict, progress: bool = False,
                skip_empty_targets: bool = False, desc: str | None = None) -> dict:
    """The loop every lsms-eval mode shares: ``predict(record, image, target)`` -> (H,W) bool mask,
    scored against the target by mean per-image Dice, mIoU and boundary F1, and by hit rate,
    pointing and leak on the referring cases, overall and per expression kind.

    Records whose image or mask cannot be read, or whose ``predict`` raises a dataset, image or
    expression error, are listed in ``skipped``, not fatal. ``skip_empty_targets``: records whose
    mask is empty are not scored (prompts are made from the mask); ``empty_skipped`` counts them."""
    dataset, records = split_records(dataset_dir, split)
    overall = Scores()
    per_kind: dict[str, Scores] = defaultdict(Scores)
    boundary: list[float] = []
    boundary_per_kind: dict[str, list[float]] = defaultdict(list)
    skipped: list[dict] = []  # records that could not be read or segmented: listed, not fatal
    masks: dict[str, object] = {}
    for record in records:
        try:
            masks[record["id"]] = dataset.read_mask(record)
        except (DatasetError, ImageError, OSError) as error:
            skipped.append({"id": record["id"], "error": " ".join(str(error).split())})
    records = [r for r in records if r["id"] in masks]
    cases = referring_instances(records, lambda r: masks[r["id"]])
    scored = [r for r in records if not (skip_empty_targets and not masks[r["id"]].any())]
    empty_skipped = len(records) - len(scored)
    referring = ReferringScores()
    start = time.perf_counter()
    iterator = scored
    if progress:
        from tqdm import tqdm

        iterator = tqdm(scored, desc=desc or f"eval {split}", unit="img", leave=False, disable=None)
    for record in iterator:
        target = masks[record["id"]]
        try:
            image = dataset.read_image(record)
            mask = predict(record, image, target)
        except (DatasetError, ImageError, ExpressionError, OSError) as error:
            skipped.append({"id": record["id"], "error": " ".join(str(error).split())})
            continue
        dice, iou = overall.add(mask, target)
        boundary.append(boundary_f1(mask, target))
        kinds = record.get("expression_kinds") or ["unlabelled"]
        for kind in kinds:
            per_kind[kind].dice_per_image.append(dice)
            per_kind[kind].iou_per_image.append(iou)
            boundary_per_kind[kind].append(boundary[-1])
        if record["id"] in cases:
            referring.add(score_referring(mask, *cases[record["id"]]), kinds)
    if not overall.n:
        first = skipped[0]["error"] if skipped else f"all {empty_skipped} masks are empty"
        raise ValueError(f"no annotation of split {split!r} could be scored; first problem: {first}")
    return {**overall.summary(), "boundary_f1": float(np.mean(boundary)), **referring.summary(),
            "skipped": skipped, "empty_skipped": empty_skipped, "split": split, "dataset": str(dataset_dir),
            "seconds": round(time.perf_counter() - start, 2),
            "per_kind": {kind: {**scores.summary(), "boundary_f1": float(np.mean(boundary_per_kind[kind])),
                                **referring.kind_summary(kind)}
                         for kind, scores in sorted(per_kind.items())}}
