"""A tiny LSMS overfits a handful of real LiTS slices and follows the expression.

Two expressions on one slice ("largest" / "smallest") must select two different lesions:
the language branch, not just the image, decides what is segmented.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import label, regionprops

from lsms_core.config import PreprocessConfig, preset
from lsms_core.lits import TUMOUR
from lsms_core.losses import LSMSLoss
from lsms_core.metrics import dice_iou
from lsms_core.model import build_model
from lsms_core.preprocessing import to_model_input, to_model_target, to_output_mask

EXPRESSIONS = ("the largest lesion", "the smallest lesion")


def _pick_slices(lits, count: int = 4, min_area: int = 25):
    """Slices with >= 2 tumours of >= min_area px whose largest is >= 3x the smallest."""
    picked = []
    for index in range(10, len(lits.hu) - 10, 7):
        components = label(lits.labels[index] == TUMOUR)
        regions = sorted((r for r in regionprops(components) if r.area >= min_area), key=lambda r: r.area)
        if len(regions) >= 2 and regions[-1].area >= 3 * regions[0].area:
            picked.append((index, components == regions[-1].label, components == regions[0].label))
        if len(picked) == count:
            break
    return picked


def test_tiny_model_overfits_real_lits_slices_and_follows_the_text(lits, text_encoder):
    torch.manual_seed(0)
    slices = _pick_slices(lits)
    assert len(slices) == 4
    prep = PreprocessConfig(image_size=128)
    images, targets, texts = [], [], []
    for index, largest, smallest in slices:
        for text, mask in zip(EXPRESSIONS, (largest, smallest)):
            images.append(to_model_input(lits.hu[index], prep, hounsfield=True))
            targets.append(to_model_target(mask, 128))
            texts.append(text)
    images, targets = torch.stack(images), torch.stack(targets)
    words, word_mask = text_encoder.encode(texts)  # frozen: computed once

    model = build_model(preset("lsms-tiny"))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    loss_fn = LSMSLoss()
    model.train()
    for _ in range(150):
        loss = loss_fn(model.forward_features(images, words, word_mask), targets)["total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    model.eval()
    with torch.no_grad():
        logits = model(images, words, word_mask)
    index, largest, smallest = slices[0]
    pred_largest, _ = to_output_mask(logits[0], largest.shape)
    pred_smallest, _ = to_output_mask(logits[1], smallest.shape)
    print("dice largest/smallest/between:", dice_iou(pred_largest, largest)[0], dice_iou(pred_smallest, smallest)[0],
          dice_iou(pred_largest, pred_smallest)[0])
    assert dice_iou(pred_largest, largest)[0] > 0.7
    assert dice_iou(pred_smallest, smallest)[0] > 0.5
    assert dice_iou(pred_largest, pred_smallest)[0] < 0.2  # two expressions, two different lesions
    all_dice = [dice_iou(to_output_mask(logits[i], (128, 128))[0], targets[i, 0].numpy() > 0.5)[0]
                for i in range(len(texts))]
    print("mean dice", np.mean(all_dice))
    assert np.mean(all_dice) > 0.6
