"""Evaluation: mean per-image Dice and mIoU of a checkpoint on one split, and the referring
figures (hit rate, pointing, leak: lsms_core.referring), overall and per expression kind,
through the same warm inference path as the CLI and the widget."""

from __future__ import annotations

import time
from collections import defaultdict

from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.inference import ExpressionError, Segmenter
from lsms_core.preprocessing import ImageError
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
    skipped: list[dict] = []  # records that could not be read or segmented: listed, not fatal
    masks: dict[str, object] = {}
    for record in records:
        try:
            masks[record["id"]] = dataset.read_mask(record)
        except (DatasetError, ImageError, OSError) as error:
            skipped.append({"id": record["id"], "error": " ".join(str(error).split())})
    records = [r for r in records if r["id"] in masks]
    cases = referring_instances(records, lambda r: masks[r["id"]])
    referring = ReferringScores()
    start = time.perf_counter()
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc=f"eval {split}", unit="img", leave=False, disable=None)
    for record in iterator:
        text = record["text"] if text_mode == "as-is" else NEUTRAL_TEXT
        try:
            image = dataset.read_image(record)
            result = segmenter.segment(image, text, hounsfield=record["units"] == "HU")
        except (DatasetError, ImageError, ExpressionError, OSError) as error:
            skipped.append({"id": record["id"], "error": " ".join(str(error).split())})
            continue
        dice, iou = overall.add(result.mask, masks[record["id"]])
        kinds = record.get("expression_kinds") or ["unlabelled"]
        for kind in kinds:
            per_kind[kind].dice_per_image.append(dice)
            per_kind[kind].iou_per_image.append(iou)
        if record["id"] in cases:
            referring.add(score_referring(result.mask, *cases[record["id"]]), kinds)
    if not overall.n:
        raise ValueError(f"no annotation of split {split!r} could be scored; first problem: {skipped[0]['error']}")
    return {**overall.summary(), **referring.summary(), "skipped": skipped, "split": split, "text_mode": text_mode, "dataset": str(dataset_dir),
            "model": segmenter.identity, "device": str(segmenter.device),
            "seconds": round(time.perf_counter() - start, 2),
            "per_kind": {kind: {**scores.summary(), **referring.kind_summary(kind)}
                         for kind, scores in sorted(per_kind.items())}}
