"""``lsms-data import-covid-ct``: the COVID-19 CT segmentation set (MedSeg; radiologist masks) as Inf-Net's
repository publishes it, with referring expressions built from its real masks.

Source: GitHub ``DengPingFan/Inf-Net`` at ``e9adc05b59095aac077d6376629698e9091e1bb7`` (a later commit deleted
``Dataset/``; ``git archive e9adc05 Dataset``). Read: ``TrainingSet/LungInfection-Train/Doctor-label/{Imgs,GT}``
(50 slices) and ``TestingSet/LungInfection-Test/{Imgs,GT}`` (48), and where present the same slices' two-class
masks ``TrainingSet/MultiClassInfection-Train/GT`` and ``TestingSet/MultiClassInfection-Test/GT`` (1 ground-glass
opacity, 2 consolidation: Inf-Net's README names them in that order, and class 2 is the denser, 170 against 101
mean grey on the test slices). The 1,600 pseudo-labelled slices are not read: their masks are a model's.

The slices are 8-bit lung-windowed JPEGs stored on their side (the spine on the image's right); they are
transposed to the standard display (anterior up, the patient's left on the image's right: heart and
descending aorta on the image's right). Units ``raw`` (windowed grey, not HU).

Per slice: the whole infection ("the lung infection", in one of a few wordings; kinds ``type`` and ``count``,
as "all lesions" is elsewhere, so ``lsms-eval``'s ``per_kind.count`` scores the whole-infection task), its
ground-glass and its consolidation parts (instances 0 and 1: the referring cases), and on slices with
infection in both lungs each lung's part (chest_sides; patient's frame). The set gives no patient identifiers
(100 slices of more than 40 patients): each slice is its own split group, so slices of one patient may sit in
two splits (stated in the model card). ``val_share`` of the training slices go to val, chosen by name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from lsms_core.dataset.lvit import _read_grey
from lsms_core.dataset.store import AnnotationDataset, DatasetError

from .chest_sides import patient_sides
from .pairs import val_from_train
from .qata import MIN_SIDE_SHARE, side_text
from lsms_core.dataset.staging import staged_dataset

FOLDERS = {"train": ("TrainingSet/LungInfection-Train/Doctor-label", "TrainingSet/MultiClassInfection-Train/GT"),
           "test": ("TestingSet/LungInfection-Test", "TestingSet/MultiClassInfection-Test/GT")}
WHOLE = ("the lung infection", "the COVID-19 infection", "the infected lung", "all the infection in the lungs")
CLASSES = {1: ("ground-glass opacity",
               ("the ground-glass opacity", "the ground glass opacities", "ground-glass areas")),
           2: ("consolidation", ("the consolidation", "the consolidated lung", "areas of consolidation"))}
LESION_TYPE = "COVID-19 pneumonia"
PROVENANCE = {"source": "COVID-19 CT segmentation set (MedSeg, medicalsegmentation.com) as published in GitHub "
                        "DengPingFan/Inf-Net @ e9adc05b59095aac077d6376629698e9091e1bb7, Dataset/",
              "licence": "repository MIT; images and radiologist masks from MedSeg's COVID-19 CT segmentation set",
              "pixels": "8-bit lung-windowed grey (not HU), transposed to the standard axial display"}


def _pick(options: tuple[str, ...], key: str) -> str:
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def slice_lines(image: np.ndarray, mask: np.ndarray, classes: np.ndarray | None, name: str, split: str) -> list[dict]:
    """``AnnotationDataset.add`` arguments for one slice (image, whole mask and class map already transposed)."""
    common = {"image": image, "split_group": f"covid-ct-{name}", "split": split, "modality": "CT", "units": "raw",
              "origin": "hand-drawn"}
    source = {"image_file": f"{name}.jpg", "set_split": split, "orient": "transpose", "pixels": PROVENANCE["pixels"]}
    lines = [{**common, "mask": mask, "text": _pick(WHOLE, name), "expression_kinds": ["type", "count"],
              "attributes": {"lesion_type": LESION_TYPE}, "source": source}]
    if classes is not None and classes.shape == mask.shape:
        for value, (kind, wordings) in CLASSES.items():
            part = classes == value
            if part.sum() >= 20:
                lines.append({**common, "mask": part, "text": _pick(wordings, f"{name}:{value}"), "instance": value - 1,
                              "expression_kinds": ["type", "density"],
                              "attributes": {"lesion_type": kind}, "source": {**source, "derived": kind}})
    parts = patient_sides(image, mask)
    total = max(int(mask.sum()), 1)
    if min(int(parts["left"].sum()), int(parts["right"].sum())) >= MIN_SIDE_SHARE * total:
        for side in ("right", "left"):
            lines.append({**common, "mask": parts[side], "text": side_text(side, name),
                          "expression_kinds": ["location"],
                          "attributes": {"lesion_type": LESION_TYPE, "location": f"{side} lung"},
                          "source": {**source, "derived": f"{side} lung"}})
    return lines


def import_covid_ct(source: str | os.PathLike, destination: str | os.PathLike, val_share: float = 0.2,
                    progress=None) -> tuple[AnnotationDataset, dict[str, int]]:
    """Import Inf-Net's ``Dataset`` folder (``source``) into a new dataset; returns it and lines per split."""
    source, destination = Path(source), Path(destination)
    jobs = []
    for split, (folder, classes_folder) in FOLDERS.items():
        images = source / folder / "Imgs"
        if not images.is_dir():
            raise DatasetError(f"{images} is missing: give Inf-Net's Dataset folder (git archive e9adc05 Dataset)")
        for image_path in sorted(images.glob("*.jpg"), key=lambda p: (len(p.stem), p.stem)):
            chosen = "val" if split == "train" and val_from_train(image_path.stem, val_share) else split
            jobs.append((chosen, image_path, source / folder / "GT" / f"{image_path.stem}.png",
                         source / classes_folder / f"{image_path.stem}.png"))
    counts = {"train": 0, "val": 0, "test": 0}
    with staged_dataset(destination, "CT", "COVID-19 CT segmentation (MedSeg)", PROVENANCE) as dataset:
        for done, (split, image_path, mask_path, classes_path) in enumerate(jobs, start=1):
            if not mask_path.is_file():
                raise DatasetError(f"{mask_path} is missing (the mask of {image_path.name}); nothing was imported")
            image = np.ascontiguousarray(_read_grey(image_path).T)
            mask = np.ascontiguousarray(_read_grey(mask_path).T > 127)
            classes = np.ascontiguousarray(_read_grey(classes_path).T) if classes_path.is_file() else None
            lines = slice_lines(image, mask, classes, image_path.stem, split)
            dataset.add_many(lines)
            counts[split] += len(lines)
            if progress is not None:
                progress(done, len(jobs))
    return AnnotationDataset.open(destination), counts
