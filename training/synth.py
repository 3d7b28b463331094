"""Synthetic referring data: synthetic lesions (training/synthetic_lesions.py) inserted into real
LiTS slices, described by RefLiTS's fact engine (training/reflits.py), written as a dataset.

Backgrounds come from the RefLiTS block of the same split only (``block_splits`` with the same gap),
so a synthetic training slice is never a validation or test slice, nor one of the gap slices between
blocks. Each synthetic slice is a fresh random insertion into a background drawn with replacement;
everything is drawn from ``numpy.random.default_rng([seed, split, attempt])``, so one seed gives the
same slices, masks and texts whatever else is built, and the first N slices of a split do not depend
on how many follow.
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np

from lsms_core.lits import LIVER, LitsVolume

from .background_variation import BackgroundVariation, draw_background, render_background
from .reflits import (SOFT_TISSUE_WINDOW, absent_expressions, block_splits, expressions_for_slice,
                      measure_lesions)
from .synthetic_lesions import SynthConfig, count_components, insert_lesions

SPLIT_ORDER = ("train", "val", "test")
USER = "lsms-data build-synth"


def background_slices(volume: LitsVolume, gap: int = 5, min_liver_area: int = 800, min_real_lesions: int = 0,
                      distractor_area: int = 6) -> dict[str, list[int]]:
    """Per split, the axial slices of that split's RefLiTS blocks whose liver covers at least
    ``min_liver_area`` px; training slices also need ``min_real_lesions`` real tumours of
    >= ``distractor_area`` px (crowded slices; validation and test are not filtered)."""
    splits = block_splits(len(volume.hu), gap=gap)
    chosen: dict[str, list[int]] = {s: [] for s in SPLIT_ORDER}
    for z, (split, _block) in sorted(splits.items()):
        if int((volume.labels[z] >= LIVER).sum()) < min_liver_area:
            continue
        if split == "train" and min_real_lesions > 0 and \
                len(count_components(volume.labels[z], distractor_area)) < min_real_lesions:
            continue
        chosen[split].append(z)
    return chosen


def build_synth(volume: LitsVolume, add: Callable[..., dict], slices_per_split: dict[str, int], seed: int = 0,
                per_lesion: int = 3, progress: Callable[[int, int], None] | None = None, *, min_area: int = 20,
                distractor_area: int = 6, gap: int = 5, min_liver_area: int = 800, absent_share: float = 0.1,
                config: SynthConfig = SynthConfig(), max_attempts_per_slice: int = 50,
                variation: BackgroundVariation | None = None, min_real_lesions: int = 0) -> dict:
    """Write ``slices_per_split[split]`` synthetic slices per split through ``add``
    (``AnnotationDataset.add``); returns, per split, the numbers of slices, lesions named by an
    expression, expressions (absent ones included), absent expressions and synthetic lesions.

    Expressions come from ``expressions_for_slice`` on the *new* slice (real and synthetic lesions
    alike), so each names its lesion and fits no other. A slice also gets one "absent" expression
    (fits no lesion, empty mask) with probability min(1, n * s / (1 - s)), n its other expressions
    and s = ``absent_share``: about that share of all expressions.

    ``variation``: training backgrounds are then new images (``draw_background``: a tilted plane
    inside the drawn slice's block, rotated, scaled, shifted and elastically deformed) rather than
    the axial slices themselves; validation and test stay axial.

    ``min_real_lesions``: training backgrounds only from the slices that hold at least this many real
    tumours of >= ``distractor_area`` px (crowded slices, where an expression must tell its lesion from
    many); validation and test backgrounds are not filtered.
    """
    if gap < 5:
        raise ValueError(f"gap must be at least 5 slices so neighbouring slices do not leak, got {gap}")
    backgrounds = background_slices(volume, gap=gap, min_liver_area=min_liver_area,
                                    min_real_lesions=min_real_lesions, distractor_area=distractor_area)
    blocks: dict[int, list[int]] = {}
    for z, (_split, block) in block_splits(len(volume.hu), gap=gap).items():
        blocks.setdefault(block, []).append(z)
    block_of = {z: block for block, zs in blocks.items() for z in zs}
    wanted = {s: int(slices_per_split.get(s, 0)) for s in SPLIT_ORDER}
    for split, n in wanted.items():
        if n < 0:
            raise ValueError(f"{split}: a negative number of slices ({n})")
        if n and not backgrounds[split]:
            crowded = f" and >= {min_real_lesions} real tumours" if split == "train" and min_real_lesions > 0 else ""
            raise ValueError(f"{split}: no slice of its blocks has a liver of >= {min_liver_area} px{crowded}")
    counts = {s: {"slices": 0, "lesions": 0, "expressions": 0, "absent": 0, "synthetic": 0} for s in SPLIT_ORDER}
    total, done = sum(wanted.values()), 0
    absent_odds = absent_share / max(1.0 - absent_share, 1e-9)
    for split_number, split in enumerate(SPLIT_ORDER):
        attempt = 0
        for k in range(wanted[split]):
            for _ in range(max_attempts_per_slice):
                rng = np.random.default_rng([seed, split_number, attempt])
                attempt += 1
                z = backgrounds[split][int(rng.integers(len(backgrounds[split])))]
                if variation is not None and split == "train":
                    drawn = draw_background(blocks[block_of[z]], volume.hu.shape[1:], rng, variation)
                    background_hu, background_labels = render_background(volume, drawn)
                    if int((background_labels >= LIVER).sum()) < min_liver_area:
                        continue
                    where = {"background": drawn}
                else:
                    background_hu, background_labels, where = volume.hu[z], volume.labels[z], {"axial_slice": z}
                hu, labels, inserted = insert_lesions(background_hu, background_labels, rng, config,
                                                      distractor_area=distractor_area)
                if not inserted:
                    continue
                text_rng = random.Random(int(rng.integers(2**62)))
                lesions = measure_lesions(hu, labels, distractor_area)
                expressions = expressions_for_slice(hu, labels, min_area=min_area, distractor_area=distractor_area,
                                                    per_lesion=per_lesion, rng=text_rng, lesions=lesions)
                if expressions:
                    break
            else:
                raise RuntimeError(f"{split}: no usable synthetic slice after {max_attempts_per_slice} attempts")
            absent = []
            if text_rng.random() < min(1.0, len(expressions) * absent_odds):
                absent = absent_expressions(lesions, text_rng, limit=1)
            synthetic = []
            for lesion in inserted:
                record = lesion.describe()
                record["instance"] = next((i for i, m in enumerate(lesions) if (m.mask & lesion.mask).any()), None)
                synthetic.append(record)
            group = f"synth-{split}-{k:05d}"
            for j, expression in enumerate(expressions + absent):
                add(hu, expression.mask, expression.text, split=split, split_group=group, patient_key=volume.case,
                    modality="CT", units="HU", window=SOFT_TISSUE_WINDOW, attributes=expression.attributes,
                    expression_kinds=expression.kinds, user=USER, annotation_id=f"{group}-{j:02d}",
                    source={"dataset": f"synthetic on LiTS case {volume.case.removeprefix('lits-')}",
                            **where, "synthetic": synthetic, "lesion": expression.lesion_index},
                    instance=expression.lesion_index)
            row = counts[split]
            row["slices"] += 1
            row["lesions"] += len({e.lesion_index for e in expressions if e.lesion_index is not None})
            row["expressions"] += len(expressions) + len(absent)
            row["absent"] += len(absent)
            row["synthetic"] += len(inserted)
            done += 1
            if progress is not None:
                progress(done, total)
    return counts
