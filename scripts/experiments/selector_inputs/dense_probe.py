"""Do the shipped finder's decoder features carry the iso- and hyperdense synthetic lesions it does not
mark? A small head (two 3x3 convolutions, or 1x1 with ``mlp``) trained on the frozen "all lesions"
embedding (256 x 64 x 64) plus the grey image and two local contrasts, against every lesion of the slice
(docs/model.md, "Tried: more of the synthetic test without a new finder").

Training: 900 slices of data/synth-sel (new synthetic lesions on training backgrounds: the finder never
trained on them); judged on 100 validation and 200 test slices of data/synth and RefLiTS's test slices: the
share of lesions of each kind that some connected part of the head's mask (> 0.5, > 0.7) overlaps with
IoU >= 0.5, against the finder's own parts, and the head's parts on no lesion per slice.

    .venv/bin/python scripts/experiments/selector_inputs/dense_probe.py [conv|mlp] [EPOCHS=8]
"""
import sys
from collections import Counter, defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from common import ROOT, shipped_model

from lsms_core.dataset import AnnotationDataset
from lsms_core.preprocessing import to_model_input, to_unit_grey
from lsms_core.referring import instance_map
from lsms_core.selection import ALL_LESIONS_TEXT, components, finder_pass
from lsms_core.text_encoder import TextEncoder

kind = sys.argv[1] if len(sys.argv) > 1 else "conv"
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 8
torch.manual_seed(0)
torch.set_grad_enabled(False)
stored, model = shipped_model()
words_all, mask_all = TextEncoder(stored.config.text).eval().encode([ALL_LESIONS_TEXT], torch.device("cpu"))


def blur(x, sd):
    size = int(3 * sd) * 2 + 1
    taps = torch.exp(-(torch.arange(size) - size // 2).float() ** 2 / (2 * sd * sd))
    taps = taps / taps.sum()
    x = F.conv2d(F.pad(x, (size // 2,) * 4, mode="replicate"), taps.view(1, 1, 1, size))
    return F.conv2d(x, taps.view(1, 1, size, 1))


def slices(path, split, limit):
    """Per slice: the head's input (1,259,64,64), its target (1,1,64,64), the finder's probability, the
    instance map and each instance's kind."""
    dataset = AnnotationDataset.open(ROOT / path)
    by_image = defaultdict(list)
    for record in dataset.select(split, expressions=True):
        by_image[record["image"]].append(record)
    keys = sorted(by_image)
    np.random.default_rng(0).shuffle(keys)
    out = []
    for key in keys[:limit]:
        records = by_image[key]
        image = dataset.read_image(records[0])
        hounsfield = records[0]["units"] == "HU"
        probability, embedding = finder_pass(model, to_model_input(image, stored.config.preprocess, hounsfield)[None],
                                             words_all, mask_all, image.shape)
        grey = F.adaptive_avg_pool2d(torch.from_numpy(to_unit_grey(image, stored.config.preprocess, hounsfield))[None, None],
                                     embedding.shape[-2:])
        inputs = torch.cat([embedding[None], torch.cat([grey, grey - blur(grey, 3), grey - blur(grey, 8)], 1) * 5], 1)
        masks = [dataset.read_mask(r) > 0 for r in records]
        instances = instance_map(masks, [r.get("instance") for r in records])
        densities = {lesion["instance"]: lesion["density"] for r in records for lesion in r["source"].get("synthetic") or []}
        kinds = {int(np.bincount(instances[m]).argmax()): densities[r["instance"]]
                 for r, m in zip(records, masks) if r.get("instance") in densities and m.any()}
        target = F.adaptive_avg_pool2d(torch.from_numpy((instances > 0).astype(np.float32))[None, None], embedding.shape[-2:])
        out.append((inputs.half(), target, probability, instances, kinds))
    return out


sets = {"train": slices("data/synth-sel", "train", 900), "val": slices("data/synth", "val", 100),
        "test": slices("data/synth", "test", 200), "RefLiTS test": slices("data/RefLiTS", "test", 100)}
inputs = torch.cat([s[0] for s in sets["train"]]).float()
targets = torch.cat([s[1] for s in sets["train"]])
mean, std = inputs[:200].mean((0, 2, 3), keepdim=True), inputs[:200].std((0, 2, 3), keepdim=True) + 1e-3
size = 3 if kind == "conv" else 1
head = nn.Sequential(nn.Conv2d(inputs.shape[1], 64, size, padding=size // 2), nn.GELU(),
                     nn.Conv2d(64, 64, size, padding=size // 2), nn.GELU(), nn.Conv2d(64, 1, 1))
optimiser = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=1e-4)
with torch.enable_grad():
    for epoch in range(epochs):
        order = torch.randperm(len(inputs))
        for begin in range(0, len(inputs), 16):
            batch = order[begin:begin + 16]
            loss = F.binary_cross_entropy_with_logits(head((inputs[batch] - mean) / std), targets[batch],
                                                      pos_weight=torch.tensor(3.0))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
head.eval()


def found(parts, instances, instance):
    lesion = instances == instance
    return any((lesion & (parts == k)).sum() / (lesion | (parts == k)).sum() >= 0.5
               for k in np.unique(parts[lesion]) if k)


print("set | mask | lesions found per kind | parts on no lesion per slice")
for name, items in sets.items():
    if name == "train":
        continue
    for label in ("finder", "head > 0.5", "head > 0.7"):
        hits, spurious = defaultdict(Counter), []
        for model_input, _, probability, instances, kinds in items:
            if label == "finder":
                mask = probability > 0.5
            else:
                logits = head((model_input.float() - mean) / std)
                mask = torch.sigmoid(F.interpolate(logits, size=instances.shape, mode="bilinear",
                                                   align_corners=False))[0, 0].numpy() > float(label[-3:])
            parts = components(mask)
            for instance in np.unique(instances)[1:]:
                counter = hits[kinds.get(int(instance), "real tumour")]
                counter["n"] += 1
                counter["found"] += found(parts, instances, instance)
            spurious.append(sum((instances[parts == k] > 0).mean() < 0.2 for k in range(1, parts.max() + 1)))
        print(f"{name} | {label} | " + ", ".join(f"{k} {c['found'] / c['n']:.2f} of {c['n']}" for k, c in sorted(hits.items()))
              + f" | {np.mean(spurious):.2f}", flush=True)
