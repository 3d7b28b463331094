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


def _two_synthetic_lesions(lits, seed: int):
    """Slice 40 with its real tumours painted over with liver and two synthetic hypodense lesions;
    returns (hu, labels, largest mask, smallest mask) when the fact engine can tell them apart."""
    from scipy import ndimage

    from training.reflits import measure_lesions
    from training.synthetic_lesions import SynthConfig, insert_lesions

    hu, labels = lits.hu[40].copy(), lits.labels[40].copy()
    tumour = labels == TUMOUR
    hu[tumour] = float(np.median(hu[labels == 1]))
    labels[tumour] = 1
    config = SynthConfig(density_p=(1.0, 0.0, 0.0), radius_px=(4.0, 10.0), irregular_p=0.0, mass_effect_p=0.0,
                         capsule_p=0.0)
    hu, labels, inserted = insert_lesions(hu, labels, np.random.default_rng(seed), config, count=2)
    lesions = measure_lesions(hu, labels, 6)
    if len(lesions) != 2 or ndimage.label(labels == TUMOUR)[1] != 2:
        return None
    largest = [les for les in lesions if les.facts.get("largest")]
    smallest = [les for les in lesions if les.facts.get("smallest")]
    if len(largest) != 1 or len(smallest) != 1:
        return None
    return hu, labels, largest[0].mask, smallest[0].mask


def test_training_with_same_slice_batches_follows_the_words_on_synthetic_lesions(lits, tmp_path):
    """lsms-train's own loop (grouped batches) on one slice with two synthetic lesions: "the
    largest lesion" and "the smallest lesion" end on different lesions, each on the one named."""
    from lsms_core.dataset import AnnotationDataset
    from lsms_core.inference import Segmenter
    from lsms_core.referring import instance_map, named_instance, score_referring
    from training.config import TrainConfig
    from training.trainer import Trainer

    found = next(filter(None, (_two_synthetic_lesions(lits, seed) for seed in range(20))))
    hu, labels, largest, smallest = found
    dataset = AnnotationDataset.create(tmp_path / "two", modality="CT")
    for copy in range(12):  # one epoch = 24 samples = 3 batches, each of 4 slices x 2 expressions
        for number, (text, mask) in enumerate(zip(EXPRESSIONS, (largest, smallest))):
            dataset.add(hu, mask, text, split="train", split_group="two", modality="CT", units="HU", instance=number,
                        annotation_id=f"two-{copy:02d}-{number}")
    config = TrainConfig(dataset=str(tmp_path / "two"), output=str(tmp_path / "run"), preset="lsms-tiny",
                         image_size=128, epochs=40, batch_size=8, lr=3e-3, weight_decay=0.0, same_slice=2, seed=0)
    Trainer(config, show_progress=False).run()

    segmenter = Segmenter(tmp_path / "run" / "last.safetensors", device="cpu")
    instances = instance_map([largest, smallest], [0, 1])
    for text, mask in zip(EXPRESSIONS, (largest, smallest)):
        prediction = segmenter.segment(hu, text, hounsfield=True).mask
        outcome = score_referring(prediction, instances, named_instance(mask, instances))
        assert outcome.hit and outcome.leak < 0.2, (text, outcome)
