"""Save a followed 3-D lesion into the annotation dataset (no Qt here): one line per slice it covers, tied by
a lesion id and the series key, and one volume record with its measurements (lsms_core.dataset.volumes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.dataset.validate import SplitCount, split_counts
from lsms_core.dataset.volumes import save_lesion, volume_key
from lsms_core.files import file_sha256
from lsms_core.privacy import dicom_identifiers, pseudonymous_key
from lsms_core.volume_measure import measure_volume
from lsms_core.windows import Window

from ..layers import SourceInfo
from .saving import HAND_DRAWN, WrongImageError, split_keeping_slices, explain_write_error
from .session import pixels_sha


@dataclass
class LesionWords:
    """The words saved with a lesion (read on ``seed_slice``), their structured fields and kinds, and how the
    seed mask was made ("model proposal" or "hand-drawn")."""

    text: str
    attributes: dict = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    seed_origin: str = HAND_DRAWN


@dataclass
class LesionSaveResult:
    """What a lesion save wrote: its volume record, its slice records, the group's annotations moved to the
    chosen split (how many, from where) and the dataset's split counts afterwards."""

    volume: dict
    records: list[dict]
    moved: int = 0
    moved_from: str | None = None
    counts: dict[str, SplitCount] = field(default_factory=dict)


def save_followed_lesion(dataset_dir: str | Path, mask: np.ndarray, volume: np.ndarray, info: SourceInfo,
                         window: Window, words: LesionWords, followed: dict, model: dict | None = None,
                         proposal: np.ndarray | None = None, include_identifiers: bool = False,
                         replaces: str | None = None, split: str | None = None) -> LesionSaveResult:
    """Save the lesion of ``mask`` (Z,H,W) on ``volume`` (Z,H,W, the image's units: HU for CT).

    followed: the layer's follow metadata (``seed_slice``, ``volume_sha``, engine, stops); the volume must
    still be the one followed. proposal: the follower's own mask (Z,H,W), for each slice's edit Dice.
    include_identifiers, split: as for one slice (saving.save_annotation); replaces: the lesion id of this
    layer's earlier save, whose lines and record this save replaces. DatasetError, writing nothing, when it
    cannot be saved.
    """
    mask = np.asarray(mask) > 0
    volume = np.asarray(volume)
    sha = pixels_sha(volume)
    if followed.get("volume_sha") and sha != followed["volume_sha"]:
        raise WrongImageError("the image under this lesion changed since it was followed (another image or edited "
                              "pixels): follow it again before saving")
    seed = int(followed["seed_slice"])
    slices = np.flatnonzero(mask.reshape(len(mask), -1).any(1))
    if seed not in slices:
        raise DatasetError(f"the lesion is empty on slice {seed}, where its words were read: draw it there, or "
                           "follow it again from a slice that shows it")
    series_key = volume_key(sha256=sha)
    sources: list[dict | None] = [None] * len(volume)
    identifiers: list[dict | None] = [None] * len(volume)
    for z in slices:
        sources[z] = {"frame": int(z)}
        if z < len(info.files) and Path(info.files[z]).is_file():
            sources[z]["file_sha256"] = file_sha256(info.files[z])
            if include_identifiers:
                identifiers[z] = dicom_identifiers(info.files[z])
        uid = info.sop_instance_uids[z] if z < len(info.sop_instance_uids) else None
        if uid:
            sources[z]["sop_uid_hash"] = pseudonymous_key(uid, "u")
    measured = measure_volume(mask, info.spacing_mm, info.slice_spacing_mm, volume, info.hounsfield)
    attributes = dict(words.attributes)
    if info.spacing_mm and not attributes.get("diameter_mm"):
        attributes["diameter_mm"] = round(measured.longest, 1)  # RECIST: the longest axial diameter, any slice
    group = info.patient_key or series_key
    follow_record = {key: followed[key] for key in ("engine", "seed_slice", "slices", "stops") if key in followed}
    try:
        dataset = AnnotationDataset.create(dataset_dir, exist_ok=True, modality=info.modality,
                                           window=window.to_record())
        earlier = dataset.split_of_group(group)
        chosen = split
        for z in slices:  # every slice of the lesion must stay in the split its pixels already have
            chosen = split_keeping_slices(dataset, volume[z], group, chosen) or chosen
        moved = dataset.set_group_split(group, chosen) if chosen and earlier and earlier != chosen else 0
        saved = save_lesion(
            dataset, volume, mask, text=words.text, seed_slice=seed, split_group=group, patient_key=group,
            modality=info.modality, units="HU" if info.hounsfield else "raw", series_key=series_key, split=chosen,
            spacing_mm=info.spacing_mm, slice_spacing_mm=info.slice_spacing_mm, window=window.to_record(),
            attributes=attributes, expression_kinds=words.kinds, slice_sources=sources, model=model,
            proposal=proposal, seed_origin=words.seed_origin, followed=follow_record,
            measurements=measured.to_record(), identifiers=identifiers, include_identifiers=include_identifiers,
            replaces=replaces)
        return LesionSaveResult(saved.volume, saved.records, moved, earlier if moved else None, split_counts(dataset))
    except OSError as error:
        raise DatasetError(explain_write_error(error, dataset_dir)) from error
