"""lsms-eval's prompt-model modes (docs/prompts.md), scored by the same loop and metrics as plain LSMS
(``training.evaluate.score_split``):

- ``prompt box``: one box per connected part of each annotation's mask (its bounding box), the
  prompt model's masks united; ``prompt point``: one positive click per part, at the pixel farthest
  from the part's border. Prompts come from the ground truth, so annotations with an empty mask are
  not scored (``empty_skipped``);
- ``refine sam``: LSMS's mask for the expression, each connected part made a box prompt, the prompt
  model's outline used where it agrees with the part (lsms_core.prompt.prompts.refine; ``parts_redrawn``
  and ``parts_kept`` count both). The same run also scores LSMS's own masks (``unrefined``), so the two
  stages are compared on the same records.
"""

from __future__ import annotations

import numpy as np

from lsms_core.dataset import DatasetError
from lsms_core.inference import Segmenter
from lsms_core.prompt import PromptSegmenter
from lsms_core.prompt.prompts import REFINE_AGREEMENT, REFINE_MARGIN, predict_parts, refine
from lsms_core.prompt.refine_decoder import refine_decoder_for
from lsms_core.windows import DEFAULT_WINDOW, Window

from .evaluate import TEXT_MODES, expression, score_split, split_records

PROMPTS = ("box", "point")
REFINERS = ("sam",)
_COMPARED = ("dice", "miou", "boundary_f1", "hit_rate", "pointing", "leak", "n", "n_referring")


def record_window(record: dict) -> Window:
    """The window the annotation was made in (its record), the LSMS default when it has none."""
    window = record.get("window")
    if not window:
        return DEFAULT_WINDOW
    return Window(str(window.get("name", "custom")), float(window["center"]), float(window["width"]))


def set_record_image(prompt_segmenter: PromptSegmenter, record: dict, image: np.ndarray) -> None:
    hounsfield = record["units"] == "HU"
    prompt_segmenter.set_image(image, hounsfield, record_window(record) if hounsfield else None)


def evaluate_prompts(dataset_dir: str, split: str = "test", prompt: str = "box", device: str = "auto",
                     progress: bool = False, prompt_segmenter: PromptSegmenter | None = None) -> dict:
    """Scores of the prompt model alone, given ground-truth prompts (``box`` or ``point``) on ``split``."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    split_records(dataset_dir, split)  # a bad dataset is reported before a model is loaded
    prompt_segmenter = prompt_segmenter or PromptSegmenter(device=device)
    prompts = 0

    def predict(record: dict, image: np.ndarray, target: np.ndarray) -> np.ndarray:
        nonlocal prompts
        set_record_image(prompt_segmenter, record, image)
        mask, _, count = predict_parts(prompt_segmenter, target, prompt)
        prompts += count
        return mask

    report = score_split(dataset_dir, split, predict, progress=progress, skip_empty_targets=True,
                         desc=f"prompt {prompt} {split}")
    return {**report, "mode": f"prompt-{prompt}", "prompts": prompts, "prompt_model": prompt_segmenter.identity,
            "device": str(prompt_segmenter.device)}


def evaluate_refined(checkpoint: str, dataset_dir: str, split: str = "test", text_mode: str = "as-is",
                     refiner: str = "sam", device: str = "auto", progress: bool = False,
                     segmenter: Segmenter | None = None, prompt_segmenter: PromptSegmenter | None = None,
                     margin: float = REFINE_MARGIN, agreement: float = REFINE_AGREEMENT,
                     refine_decoder: str | None = None) -> dict:
    """Scores of LSMS's masks redrawn by the prompt model (one box per connected part, grown by ``margin``
    px of its input, the outline kept where its IoU with the part is >= ``agreement``), and in
    ``unrefined`` the same figures of LSMS's own masks on the same records. refine_decoder: the mask
    decoder that outlines (``PromptSegmenter``'s argument; None: the one made for ``checkpoint``,
    ``refine_decoder_for``; not used when ``prompt_segmenter`` is given)."""
    if refiner not in REFINERS:
        raise ValueError(f"refiner must be one of {REFINERS}, got {refiner!r}")
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text mode must be one of {TEXT_MODES}, got {text_mode!r}")
    split_records(dataset_dir, split)
    segmenter = segmenter or Segmenter(checkpoint, device=device)
    if prompt_segmenter is None:
        prompt_segmenter = PromptSegmenter(device=device, refine_decoder=refine_decoder or refine_decoder_for(checkpoint))
    outlined_by = prompt_segmenter.refine_identity  # loads the decoder: a bad file is reported before the run
    proposals: dict[str, np.ndarray] = {}
    prompts = redrawn = kept = 0

    def lsms(record: dict, image: np.ndarray, target: np.ndarray) -> np.ndarray:
        mask = segmenter.segment(image, expression(record, text_mode), hounsfield=record["units"] == "HU").mask
        proposals[record["id"]] = mask
        return mask

    def refined(record: dict, image: np.ndarray, target: np.ndarray) -> np.ndarray:
        if record["id"] not in proposals:
            raise DatasetError("LSMS could not segment it")
        nonlocal prompts, redrawn, kept
        set_record_image(prompt_segmenter, record, image)
        result = refine(prompt_segmenter, proposals[record["id"]], margin=margin, agreement=agreement)
        prompts, redrawn, kept = prompts + result.redrawn + result.kept, redrawn + result.redrawn, kept + result.kept
        return result.mask

    plain = score_split(dataset_dir, split, lsms, progress=progress, desc=f"LSMS {split}")
    report = score_split(dataset_dir, split, refined, progress=progress, desc=f"refine {split}")
    report["seconds"] = round(report["seconds"] + plain["seconds"], 2)
    return {**report, "mode": f"refine-{refiner}", "text_mode": text_mode, "prompts": prompts,
            "parts_redrawn": redrawn, "parts_kept": kept, "refine_margin": margin, "refine_agreement": agreement,
            "model": segmenter.identity, "prompt_model": outlined_by,
            "device": str(segmenter.device), "unrefined": {key: plain[key] for key in _COMPARED}}

