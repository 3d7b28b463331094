"""``lsms-data import-pairs``: image and mask folders (one split per pair of folders) -> a new dataset.

For public sets published as pictures with masks beside them, such as the COVID-19 CT segmentation set
(MedSeg; 8-bit windowed slices, not Hounsfield units) in Inf-Net's repository. Images and masks are
matched by file stem. ``orient`` puts a set published on its side right before anything is stored (the
product shows axial CT anterior up, the patient's left on the image's right); the same transform is
applied to the mask. Every image is its own split group unless ``group_by`` (a regular expression whose
first group names the patient) says otherwise. Streams: one pair in memory at a time.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from lsms_core.dataset.lvit import _read_grey
from lsms_core.dataset.store import AnnotationDataset, DatasetError

from lsms_core.dataset.staging import staged_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
ORIENTATIONS = {
    "as-is": lambda a: a,
    "transpose": lambda a: a.T,  # rows <-> columns (a slice stored x-first, as NIfTI arrays often are)
    "rot90": lambda a: np.rot90(a, 1),  # a quarter turn anticlockwise
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),  # a quarter turn clockwise
    "flip-lr": lambda a: a[:, ::-1],
    "flip-ud": lambda a: a[::-1],
}


def _files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def _group(stem: str, prefix: str, group_by: str | None) -> str:
    if group_by:
        match = re.search(group_by, stem)
        if match is None or not match.groups():
            raise DatasetError(f"--group-by {group_by!r} does not match {stem!r} with a group naming the patient")
        stem = match.group(1)
    safe = re.sub(r"[^A-Za-z0-9:_./-]+", "_", stem)[:80]
    return f"{prefix}-{safe}" if safe == stem else f"{prefix}-{safe}-{hashlib.sha256(stem.encode()).hexdigest()[:8]}"


def val_from_train(stem: str, share: float) -> bool:
    """Whether a training pair moves to val: by a hash of its name, so the same pairs move on every machine."""
    return int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def import_pairs(destination: str | os.PathLike, pairs: list[tuple[str, str, str]], text: str, *,
                 modality: str = "OT", orient: str = "as-is", prefix: str = "pairs", group_by: str | None = None,
                 val_share: float = 0.0, pixels_note: str = "", provenance: dict | None = None,
                 progress=None) -> tuple[AnnotationDataset, dict[str, int]]:
    """Import ``pairs`` of (split, image folder, mask folder) into a new dataset at ``destination``.

    Each image gets one line with ``text`` and its whole mask (any non-zero pixel; an empty mask is kept as a
    "no such finding" sample). ``val_share``: that share of the train pairs (chosen by name) goes to val.
    Units are ``raw`` (the pixels as published; ``pixels_note`` says what they are, e.g. windowed 8-bit
    grey, kept in each line's source). All or nothing, as the other importers. Returns the dataset and the
    count per split.
    """
    if orient not in ORIENTATIONS:
        raise DatasetError(f"orient must be one of {', '.join(ORIENTATIONS)}, got {orient!r}")
    if not 0.0 <= val_share < 1.0:
        raise DatasetError(f"the val share must be in [0, 1), got {val_share}")
    if not " ".join(text.split()):
        raise DatasetError("the text of the imported lines is empty")
    destination = Path(destination)
    jobs = []
    for split, image_dir, mask_dir in pairs:
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        images, masks = _files(Path(image_dir)), _files(Path(mask_dir))
        unmatched = sorted(set(images) ^ set(masks))
        if unmatched:
            raise DatasetError(f"{image_dir} and {mask_dir} do not pair up: no partner for {', '.join(unmatched[:5])}"
                               f"{' ...' if len(unmatched) > 5 else ''} (images and masks are matched by file stem)")
        for stem in sorted(images, key=lambda s: (len(s), s)):
            chosen = "val" if split == "train" and val_share and val_from_train(stem, val_share) else split
            jobs.append((chosen, stem, images[stem], masks[stem]))
    if not jobs:
        raise DatasetError("no image found in the folders given")
    counts = dict.fromkeys(SPLITS, 0)
    turn = ORIENTATIONS[orient]
    with staged_dataset(destination, modality, f"imported pairs ({prefix})", provenance) as dataset:
        for done, (split, stem, image_path, mask_path) in enumerate(jobs, start=1):
            try:
                image = np.ascontiguousarray(turn(_read_grey(image_path)))
                mask = np.ascontiguousarray(turn(_read_grey(mask_path) > 0))
                dataset.add(image, mask, text, split=split, split_group=_group(stem, prefix, group_by),
                            modality=modality, units="raw", origin="hand-drawn",
                            source={"image_file": image_path.name, "mask_file": mask_path.name, "orient": orient,
                                    **({"pixels": pixels_note} if pixels_note else {})})
            except MemoryError:
                raise
            except Exception as exc:  # Pillow on a damaged file, a mask of another size, ...
                message = " ".join(str(exc).split()) or type(exc).__name__
                raise DatasetError(f"cannot import {image_path} (mask {mask_path.name}): {message}; nothing was "
                                   f"imported into {destination}") from exc
            counts[split] += 1
            if progress is not None:
                progress(done, len(jobs))
    return AnnotationDataset.open(destination), counts
