"""Save a mask as an annotation through lsms_core's one writer (no Qt here): a model's corrected
proposal, or a mask drawn by hand; as a new annotation or in place of the layer's earlier save; in
its patient's split, or with the patient's whole split group moved to a chosen split."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsms_core.dataset import AnnotationDataset, DatasetError
from lsms_core.dataset.store import image_file_name
from lsms_core.dataset.validate import SplitCount, split_counts
from lsms_core.files import file_sha256
from lsms_core.measure import measure_mask
from lsms_core.privacy import dicom_identifiers, pseudonymous_key
from lsms_core.windows import Window

from ..layers import SourceInfo
from .session import Proposal, pixels_sha

HAND_DRAWN = "hand-drawn"  # provenance.origin of a mask drawn without a proposal
MODEL_PROPOSAL = "model proposal"  # provenance.origin of a (corrected) proposal


@dataclass
class Annotation:
    """What is saved with a mask: the expression and its fields, the slice it was drawn on (its index,
    None for a 2-D image, and the SHA of its pixels) and, for a model's proposal, the model and the
    proposed (H,W) bool mask; both None for a mask drawn by hand."""

    text: str
    attributes: dict = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    slice_index: int | None = None
    image_sha: str = ""
    model: dict | None = None
    proposal: np.ndarray | None = None

    @classmethod
    def from_proposal(cls, proposal: Proposal) -> "Annotation":
        request = proposal.request
        return cls(request.text, dict(request.attributes), list(request.kinds), request.slice_index,
                   proposal.image_sha, proposal.provenance_model(), proposal.mask)

    @property
    def hand_drawn(self) -> bool:
        return self.proposal is None


@dataclass
class SaveResult:
    """What a save wrote: the record, the group's earlier annotations moved to the chosen split (how many,
    and from which split; 0 and None when none moved), and the dataset's split counts afterwards."""

    record: dict
    moved: int = 0
    moved_from: str | None = None
    counts: dict[str, SplitCount] = field(default_factory=dict)


class WrongImageError(DatasetError):
    """The mask would be saved against pixels other than those it was drawn on."""


def explain_write_error(error: OSError, dataset_dir: str | Path) -> str:
    """One line for a failed write: what went wrong, that earlier annotations are intact, what to do."""
    where = f"the dataset folder {dataset_dir}"
    if error.errno == errno.ENOSPC or error.errno == getattr(errno, "EDQUOT", None):
        problem, action = "the disk holding it is full", "free some space, then save again"
    elif isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem, action = "it is not writable", "choose a folder you can write to, or fix its permissions"
    else:
        problem, action = f"writing failed ({error.strerror or error})", "check the folder, then save again"
    return (f"could not write to {where}: {problem}. This annotation was not saved (earlier ones are intact); "
            f"{action}.")


def save_annotation(dataset_dir: str | Path, annotation: Annotation | Proposal, mask: np.ndarray,
                    pixels: np.ndarray, info: SourceInfo, window: Window, include_identifiers: bool = False,
                    replaces: str | None = None, split: str | None = None) -> SaveResult:
    """Save one annotation; returns what was written. ``mask`` (H,W), ``pixels`` the source slice
    (H,W) now (in the image's units: HU for CT).

    include_identifiers: also store the source DICOM's patient and study identifiers (the
    user opted in); off, the line holds only pseudonymous keys.
    replaces: the id of this layer's earlier annotation, which this one updates in place (the
    dataset's line is replaced atomically); None appends a new annotation.
    split: None keeps the split of the annotation's group (its patient), or draws one for a new group;
    "train", "val" or "test" puts the group there, moving its earlier annotations along (one atomic
    rewrite). Either way DatasetError, writing nothing, when the slice is annotated under another group in
    another split (the same pixels would be in two splits).
    """
    if isinstance(annotation, Proposal):
        annotation = Annotation.from_proposal(annotation)
    mask = np.asarray(mask) > 0
    if pixels_sha(pixels) != annotation.image_sha:
        raise WrongImageError("the image under this mask changed since it was segmented (another layer, slice or "
                              "edited pixels): segment it again before saving")
    if mask.shape != pixels.shape:
        raise WrongImageError(f"the mask is {mask.shape} but its image slice is {pixels.shape}")
    attributes = dict(annotation.attributes)
    measured = measure_mask(mask, info.spacing_mm, pixels, info.hounsfield)
    if measured.pixels and info.spacing_mm and not attributes.get("diameter_mm"):
        attributes["diameter_mm"] = round(measured.longest, 1)
    index = annotation.slice_index or 0
    source: dict = {"frame": annotation.slice_index}
    identifiers = None
    if info.files:
        path = Path(info.files[index] if index < len(info.files) else info.files[0])
        if path.is_file():
            source["file_sha256"] = file_sha256(path)
            if include_identifiers:
                identifiers = dicom_identifiers(path)
    uid = info.sop_instance_uids[index] if index < len(info.sop_instance_uids) else None
    if uid:
        source["sop_uid_hash"] = pseudonymous_key(uid, "u")
    group = info.patient_key or f"img-{annotation.image_sha[:16]}"
    try:
        dataset = AnnotationDataset.create(dataset_dir, exist_ok=True, modality=info.modality,
                                           window=window.to_record())
        earlier = dataset.split_of_group(group)
        split = split_keeping_slices(dataset, pixels, group, split)
        moved = dataset.set_group_split(group, split) if split and earlier and earlier != split else 0
        record = dataset.add(pixels, mask, annotation.text, split_group=group, patient_key=group, split=split,
                             modality=info.modality, units="HU" if info.hounsfield else "raw",
                             spacing_mm=info.spacing_mm, window=window.to_record(), attributes=attributes,
                             expression_kinds=annotation.kinds, source=source, model=annotation.model,
                             proposal=annotation.proposal, identifiers=identifiers,
                             include_identifiers=include_identifiers,
                             origin=HAND_DRAWN if annotation.hand_drawn else MODEL_PROPOSAL, replaces=replaces)
        return SaveResult(record, moved, earlier if moved else None, split_counts(dataset))
    except OSError as error:
        raise DatasetError(explain_write_error(error, dataset_dir)) from error


def split_keeping_slices(dataset: AnnotationDataset, pixels: np.ndarray, group: str, split: str | None
                          ) -> str | None:
    """The split to save with so that these pixels stay in one split: ``split`` (the choice, None for
    auto); for a new group on auto, the split where other groups already hold this slice. DatasetError
    when the group's split (chosen or kept) differs from theirs."""
    image = image_file_name(pixels)
    theirs = {r.get("split"): r.get("split_group") for r in dataset.records
              if r.get("image") == image and r.get("split_group") != group}
    target = split or dataset.split_of_group(group)
    if not theirs:
        return split
    if target is None and len(theirs) == 1:
        return next(iter(theirs))  # a new patient group on auto joins the slice's split
    if set(theirs) != {target}:
        where = ", ".join(f"{s!r} (group {g!r})" for s, g in theirs.items())
        raise DatasetError(f"this slice is already annotated in split {where}; saving it in "
                           f"{target or 'a drawn split'!r} would put the same pixels in two splits: choose "
                           f"{next(iter(theirs))!r} under Split (or move that group with lsms-data set-split)")
    return split
