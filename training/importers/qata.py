"""``lsms-data import-qata``: QaTa-COV19 (chest radiographs, COVID-19 infection masks, one sentence each).

Two layouts are read:

- **SGSeg's** (GitHub ``ShuchangYe-bib/SGSeg``, folder ``data/QaTa``): ``images/{train,valid,test}/images/<name>.png``,
  ``images/<split>/masks/mask_<name>.png`` and ``prompts/annotation.json`` (``{train, valid, test}`` lists of
  ``image_path`` (the mask's name), ``caption``, ``pulmonary_infection``, ``infected_area``, ``pseudo_label``);
- **LViT's** original release: ``{Train,Val,Test}_Folder/{img,labelcol}`` with ``<Split>_text.xlsx``.

Each image becomes one line with its sentence and whole mask (the paper's task) and, on images with
infection in both lungs, one line per lung ("the infection in the left lung") with that lung's part of
the mask (``chest_sides``). **Sides**: QaTa's sentences name the *image's* side (on 96-97 % of the
unilateral images of every split the mask lies on the side of the image the sentence names, while the
heart and the markers show the standard display, patient's right on the image's left:
``python -m training.importers.check_qata_sides``). The product speaks in the patient's frame, as
radiologists do, so by default the importer swaps left and right in the sentences (the published one is
kept in ``source.qata_caption``); ``captions="as-published"`` keeps them.

Patients: BIMCV images (``sub-s<subject>_ses-...``) are grouped by subject, the others by image; the
official splits are kept (no subject is in two). An image whose pixels were already imported is dropped (the
SGSeg snapshot holds 5,624 files twice, as ``sub-S...`` and ``sub-s...``; the annotation names one of each
pair, and an image listed twice would otherwise sit in two splits).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from lsms_core.dataset.lvit import LVIT_SPLITS, _image_for_mask, _read_grey, read_text_table
from lsms_core.dataset.staging import staged_dataset
from lsms_core.dataset.store import AnnotationDataset, DatasetError, image_file_name

from .chest_sides import patient_sides

SGSEG_SPLITS = {"train": "train", "valid": "val", "test": "test"}
CAPTION_MODES = ("patient", "as-published")
MODALITY = "DX"  # digital radiography; the set mixes CR and DX sources without saying which
LESION_TYPE = "COVID-19 pulmonary infection"
MIN_SIDE_SHARE = 0.05  # a lung's part below this share of the mask is not a finding of its own
SIDE_TEMPLATES = ("the infection in the {side} lung", "{side} lung infection", "the opacity in the {side} lung",
                  "the {side}-sided infection", "infection of the {side} lung", "the {side} lung opacity")
PROVENANCE = {
    "sgseg": {"source": "GitHub ShuchangYe-bib/SGSeg, folder data/QaTa", "licence": (
        "repository MIT; images from the QaTa-COV19 release (Qatar University and Tampere University, Kaggle), "
        "sentences from LViT (Li et al., IEEE TMI 2023) as cleaned by SGSeg")},
    "lvit": {"source": "LViT's QaTa-COV19 release (Train_Folder, Val_Folder, Test_Folder)", "licence": (
        "images from the QaTa-COV19 release (Qatar University and Tampere University, Kaggle), sentences from "
        "LViT (Li et al., IEEE TMI 2023)")},
}


def swap_sides(text: str) -> str:
    """``left`` <-> ``right`` as whole words (any case kept lower: QaTa's sentences are lower case)."""
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", text)


def patient_group(image_name: str) -> str:
    """The split group of a QaTa image: its BIMCV subject (``qata-sub-s08047``), else the image itself."""
    match = re.match(r"sub-s(\d+)_", image_name, flags=re.IGNORECASE)
    if match:
        return f"qata-sub-s{match.group(1)}"
    stem = re.sub(r"[^A-Za-z0-9:_./-]+", "_", Path(image_name).stem)[:100]
    return f"qata-{stem}"


def side_text(side: str, image_name: str) -> str:
    """One of SIDE_TEMPLATES for ``side``, chosen by the image's name (the same on every import)."""
    index = int(hashlib.sha256(f"{image_name}:{side}".encode()).hexdigest(), 16) % len(SIDE_TEMPLATES)
    return SIDE_TEMPLATES[index].format(side=side)


def _sgseg_jobs(root: Path) -> list[dict]:
    annotation = root / "prompts" / "annotation.json"
    try:
        table = json.loads(annotation.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{annotation}: cannot read it as JSON ({exc})") from exc
    if not isinstance(table, dict) or not any(isinstance(table.get(s), list) for s in SGSEG_SPLITS):
        raise DatasetError(f"{annotation} must hold lists 'train', 'valid' and/or 'test'")
    jobs = []
    for folder, split in SGSEG_SPLITS.items():
        for entry in table.get(folder) or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("image_path"), str) \
                    or not str(entry.get("caption") or "").strip():
                raise DatasetError(f"{annotation}: an entry of {folder!r} lacks image_path or caption: {entry!r:.200}")
            mask_name = entry["image_path"]
            image_name = mask_name[5:] if mask_name.startswith("mask_") else mask_name
            jobs.append({"split": split, "image": root / "images" / folder / "images" / image_name,
                         "mask": root / "images" / folder / "masks" / mask_name, "caption": entry["caption"],
                         "count": entry.get("infected_area"), "bilateral": entry.get("pulmonary_infection") == 2})
    return jobs


def _lvit_jobs(root: Path) -> list[dict]:
    jobs = []
    for name, split in LVIT_SPLITS.items():
        folder = root / f"{name}_Folder"
        if not folder.is_dir():
            continue
        table_path = next((p for p in (folder / f"{name}_text.xlsx", root / f"{name}_text.xlsx") if p.is_file()), None)
        if table_path is None:
            raise DatasetError(f"{folder} has no {name}_text.xlsx (columns Image, Description)")
        texts = read_text_table(table_path)
        for mask_path in sorted((folder / "labelcol").glob("*.png")):
            if mask_path.name not in texts:
                raise DatasetError(f"{table_path} has no Description for mask {mask_path.name}")
            image_path = _image_for_mask(folder / "img", mask_path.name)
            if image_path is None:
                raise DatasetError(f"no image in {folder / 'img'} for mask {mask_path.name}")
            caption = texts[mask_path.name]
            jobs.append({"split": split, "image": image_path, "mask": mask_path, "caption": caption, "count": None,
                         "bilateral": "bilateral" in caption.lower()})
    return jobs


def qata_layout(source: Path) -> str:
    """``sgseg`` or ``lvit``; DatasetError naming what was expected when it is neither."""
    if (source / "prompts" / "annotation.json").is_file() and (source / "images").is_dir():
        return "sgseg"
    if any((source / f"{name}_Folder").is_dir() for name in LVIT_SPLITS):
        return "lvit"
    raise DatasetError(f"{source} is not a QaTa-COV19 folder: expected SGSeg's layout (prompts/annotation.json and "
                       "images/{train,valid,test}/) or LViT's (Train_Folder, Val_Folder, Test_Folder)")


def annotations_for(image: np.ndarray, mask: np.ndarray, job: dict, captions: str, sides: bool) -> list[dict]:
    """The lines of one QaTa image (``AnnotationDataset.add`` arguments): the sentence with the whole mask and,
    for a bilateral finding whose two lungs' parts each hold MIN_SIDE_SHARE of it, one line per lung."""
    published = " ".join(str(job["caption"]).split())
    text = swap_sides(published) if captions == "patient" else published
    name = job["image"].name
    group = patient_group(name)
    source = {"qata_image": name, "qata_split": job["split"], "qata_caption": published,
              "sides": "patient" if captions == "patient" else "image"}
    location = text.rstrip(".").split(", ")[-1]
    attributes = {"lesion_type": LESION_TYPE, "location": location}
    if isinstance(job.get("count"), int):
        attributes["count"] = job["count"]
    common = {"image": image, "split_group": group, "split": job["split"], "modality": MODALITY, "units": "raw",
              "origin": "hand-drawn"}
    lines = [{**common, "mask": mask, "text": text, "attributes": attributes,
              "expression_kinds": ["type", "count", "location"], "source": source}]
    if not (sides and job["bilateral"] and captions == "patient"):
        return lines
    parts = patient_sides(image, mask)
    total = max(int(mask.sum()), 1)
    if min(int(parts["left"].sum()), int(parts["right"].sum())) < MIN_SIDE_SHARE * total:
        return lines  # the mask does not show the two lungs the sentence names: no side lines
    for instance, side in enumerate(("right", "left")):
        lines.append({**common, "mask": parts[side], "text": side_text(side, name), "instance": instance,
                      "attributes": {"lesion_type": LESION_TYPE, "location": f"{side} lung"},
                      "expression_kinds": ["location"], "source": {**source, "derived": f"{side} lung"}})
    return lines


def import_qata(source: str | os.PathLike, destination: str | os.PathLike, captions: str = "patient",
                sides: bool = True, limit: int | None = None, progress=None) -> tuple[AnnotationDataset, dict]:
    """Import a QaTa-COV19 folder (SGSeg's or LViT's layout) into a new dataset at ``destination``.

    Streams: one image in memory at a time; ``progress(done, total)`` after each. All or nothing: built in a
    hidden folder next to ``destination`` and renamed into place at the end. ``limit``: only the first N
    images of each split (small copies for tests and trials). Returns the dataset and counts
    (``images``, ``lines``, ``duplicates`` dropped, ``side_lines``).
    """
    if captions not in CAPTION_MODES:
        raise DatasetError(f"captions must be one of {CAPTION_MODES}, got {captions!r}")
    source, destination = Path(source), Path(destination)
    layout = qata_layout(source)
    jobs = _sgseg_jobs(source) if layout == "sgseg" else _lvit_jobs(source)
    if limit is not None:
        jobs = [job for split in SGSEG_SPLITS.values() for job in [j for j in jobs if j["split"] == split][:limit]]
    if not jobs:
        raise DatasetError(f"{source} lists no image")
    counts = {"images": 0, "lines": 0, "duplicates": 0, "side_lines": 0}
    seen: set[str] = set()  # the dataset's content names of the images imported so far
    with staged_dataset(destination, MODALITY, f"QaTa-COV19 imported from {PROVENANCE[layout]['source']} "
                        f"({source.name})", {**PROVENANCE[layout], "layout": layout, "captions": captions}) as dataset:
        for done, job in enumerate(jobs, start=1):
            try:
                image = _read_grey(job["image"])
                mask = _read_grey(job["mask"]) > 0
            except FileNotFoundError as exc:
                raise DatasetError(f"{job['image'].name}: {exc.filename} is missing; nothing was imported into "
                                   f"{destination}") from exc
            except OSError as exc:
                raise DatasetError(f"cannot read {job['image']} or its mask ({exc}); nothing was imported into "
                                   f"{destination}") from exc
            name = image_file_name(image)
            if name in seen:
                counts["duplicates"] += 1
            else:
                seen.add(name)
                try:
                    lines = annotations_for(image, mask, job, captions, sides)
                    dataset.add_many(lines)
                except DatasetError as exc:
                    raise DatasetError(f"cannot import {job['image']} (mask {job['mask'].name}): {exc}; nothing was "
                                       f"imported into {destination}") from exc
                counts["images"] += 1
                counts["lines"] += len(lines)
                counts["side_lines"] += len(lines) - 1
            if progress is not None:
                progress(done, len(jobs))
    return AnnotationDataset.open(destination), counts
