"""Fine-tune Refine's mask decoder for an LSMS checkpoint on a dataset's training split (``lsms-train-refine``).

LiteMedSAM's image and prompt encoders stay frozen (each training slice is encoded once); its mask decoder
learns to outline the dataset's lesions from two kinds of box prompt: each lesion's (a connected part of a
training mask) box, each side moved by up to 15 % of the box's size and grown by Refine's margin; and the box of
each part of the checkpoint's own answer on the training expressions, with the lesion it overlaps most as
target: the boxes Refine is given (docs/prompts.md, "Refine"). Loss: Dice + BCE on the 256x256 logits, AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lsms_core.prompt import PromptSegmenter
from lsms_core.prompt.prompts import REFINE_MARGIN, mask_parts
from lsms_core.prompt.sam_decoder import MaskDecoder
from lsms_core.prompt.tiny_vit import IMAGE_SIZE

from .evaluate import split_records
from .prompt_eval import set_record_image

BOX_JITTER = 0.15  # of the box's width/height, each side: how far off LSMS's parts' boxes are


@dataclass
class RefineExample:
    """One box prompt and its target on one encoded slice: ``embedding`` (1,256,64,64), ``filled`` (h,w) of the
    256x256 input the slice fills, ``shape`` (H,W) of the slice, ``lesion`` (H,W) bool the target, ``box_part``
    (H,W) bool the checkpoint's part whose box is the prompt (None: the lesion's own box, jittered)."""

    embedding: torch.Tensor
    filled: tuple[int, int]
    shape: tuple[int, int]
    lesion: np.ndarray
    box_part: np.ndarray | None = None


def refine_examples(dataset_dir: str, encoder: PromptSegmenter, segmenter=None, split: str = "train",
                    progress: Callable[[int, int], None] | None = None) -> list[RefineExample]:
    """One example per distinct lesion of ``split`` and, with an LSMS ``segmenter``, one per part of its answer
    that overlaps a lesion of the record's mask. ``progress(done, total)`` after each record."""
    dataset, records = split_records(dataset_dir, split)
    examples: list[RefineExample] = []
    seen: set = set()
    for index, record in enumerate(records):
        image = dataset.read_image(record)
        set_record_image(encoder, record, image)
        encoded = encoder.encoding()
        embedding = encoded.embedding.clone()  # out of inference mode, so autograd may save it; shared (4 MB)
        lesions = mask_parts(dataset.read_mask(record))
        for lesion in lesions:
            key = (encoder.current_key, lesion.tobytes())
            if key not in seen:
                seen.add(key)
                examples.append(RefineExample(embedding, encoded.filled, encoded.shape, lesion))
        if segmenter is not None and lesions:
            answer = segmenter.segment(image, record["text"], hounsfield=record["units"] == "HU").mask
            for part in mask_parts(answer):
                overlaps = [np.count_nonzero(part & lesion) for lesion in lesions]
                if max(overlaps):
                    examples.append(RefineExample(embedding, encoded.filled, encoded.shape,
                                                  lesions[int(np.argmax(overlaps))], part))
        if progress is not None:
            progress(index + 1, len(records))
    return examples


def box_and_target(example: RefineExample, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The example's box prompt (1,4) in the 256-space (x0, y0, x1, y1) and its target (1,1,256,256) float."""
    source = example.lesion if example.box_part is None else example.box_part
    rows, cols = np.flatnonzero(source.any(1)), np.flatnonzero(source.any(0))
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
    size = np.array([x1 - x0 + 1, y1 - y0 + 1] * 2, dtype=np.float64)
    jitter = 0.0 if example.box_part is not None else rng.uniform(-BOX_JITTER, BOX_JITTER, 4) * size
    height, width = example.shape
    grow = REFINE_MARGIN * max(example.shape) / IMAGE_SIZE
    box = np.array([x0, y0, x1, y1], dtype=np.float64) + jitter + np.array([-1, -1, 1, 1]) * grow
    box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    scale = np.array([example.filled[1] / width, example.filled[0] / height])
    prompt = torch.tensor(box * np.tile(scale, 2), dtype=torch.float32)[None]
    target = F.interpolate(torch.from_numpy(example.lesion.astype(np.float32))[None, None], size=example.filled,
                           mode="bilinear", align_corners=False) > 0.5
    target = F.pad(target.float(), (0, IMAGE_SIZE - example.filled[1], 0, IMAGE_SIZE - example.filled[0]))
    return prompt, target


def train_refine_decoder(encoder: PromptSegmenter, examples: list[RefineExample], steps: int, lr: float = 5e-5,
                         seed: int = 0, progress: Callable[[int, float], None] | None = None) -> MaskDecoder:
    """A copy of ``encoder``'s mask decoder trained ``steps`` steps (one example each, drawn at random) on
    ``examples``; ``progress(step, loss)`` after each step. The encoder's own decoder is left as it was."""
    import copy

    if not examples:
        raise ValueError("no lesions to learn from: the training split has no non-empty mask")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, device = encoder.model, encoder.device
    decoder = copy.deepcopy(model.mask_decoder).to(device).train().requires_grad_(True)
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.01)
    with torch.no_grad():
        dense_pe = model.prompt_encoder.get_dense_pe()
    for step in range(steps):
        example = examples[rng.integers(len(examples))]
        box, target = (tensor.to(device) for tensor in box_and_target(example, rng))
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(None, box)
        logits, _ = decoder(example.embedding.to(device), dense_pe, sparse, dense, False)
        logits = logits[:, :1]
        probability = torch.sigmoid(logits)
        dice = 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target) + dice
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    return decoder.eval().requires_grad_(False)
