"""Evaluation: mean per-image Dice and mIoU of a checkpoint on one split, and the referring
figures (hit rate, pointing, leak: lsms_core.referring), overall and per expression kind,
through the same warm inference path as the CLI and the widget."""

from __future__ import annotations

import time
from collections import defaultdict

from lsms_core.dataset import AnnotationDataset
from lsms_core.inference import Segmenter
from lsms_core.metrics import Scores
from lsms_core.referring import ReferringScores, referring_instances, score_referring

NEUTRAL_TEXT = "a lesion"
TEXT_MODES = ("as-is", "neutral")


def evaluate(checkpoint: str, dataset_dir: str, split: str = "test", text_mode: str = "as-is",
             device: str = "auto", progress: bool = False, segmenter: Segmenter | None = None) -> dict:
    """Scores of ``checkpoint`` on ``split``. text_mode ``neutral`` replaces every expression with
    "a lesion", which shows how much the model relies on the language."""
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text mode must be one of {TEXT_MODES}, got {text_mode!r}")
    dataset = AnnotationDataset.open(dataset_dir)
    records = dataset.select(split)
    if not records:
        raise ValueError(f"{dataset_dir} has no annotations in split {split!r}")
    segmenter = segmenter or Segmenter(checkpoint, device=device)
    overall = Scores()
    per_kind: dict[str, Scores] = defaultdict(Scores)
    cases = referring_instances(records, dataset.read_mask)
    referring = ReferringScores()
    start = time.perf_counter()
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc=f"eval {split}", unit="img", leave=False, disable=None)
    for record in iterator:
        image = dataset.read_image(record)
        text = record["text"] if text_mode == "as-is" else NEUTRAL_TEXT
        result = segmenter.segment(image, text, hounsfield=record["units"] == "HU")
        dice, iou = overall.add(result.mask, dataset.read_mask(record))
        kinds = record.get("expression_kinds") or ["unlabelled"]
        for kind in kinds:
            per_kind[kind].dice_per_image.append(dice)
            per_kind[kind].iou_per_image.append(iou)
        if record["id"] in cases:
            referring.add(score_referring(result.mask, *cases[record["id"]]), kinds)
    return {**overall.summary(), **referring.summary(), "split": split, "text_mode": text_mode, "dataset": str(dataset_dir),
            "model": segmenter.identity, "device": str(segmenter.device),
            "seconds": round(time.perf_counter() - start, 2),
            "per_kind": {kind: {**scores.summary(), **referring.kind_summary(kind)}
                         for kind, scores in sorted(per_kind.items())}}
