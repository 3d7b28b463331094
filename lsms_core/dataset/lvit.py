"""Import and export LViT's layout (QaTa-COV19, MosMedData+).

``{Train,Val,Test}_Folder/{img,labelcol}/`` with ``{Split}_text.xlsx`` (columns ``Image``,
``Description``) inside each folder. As in LViT's ``Load_Dataset.py``, the text is keyed by
the *mask's* file name: QaTa names masks ``mask_<image name>``, MosMedData+ gives the mask the
image's own stem. Images are 8-bit PNGs, so export maps HU through the annotation's window.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from ..config import PreprocessConfig
from ..preprocessing import luminance
from ..windows import percentile_limits, window_limits
from .staging import check_new_destination, staged_dataset
from .store import AnnotationDataset, DatasetError

LVIT_SPLITS = {"Train": "train", "Val": "val", "Test": "test"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_text_table(path: Path) -> dict[str, str]:
    """``Image`` -> ``Description`` from an LViT xlsx."""
    from openpyxl import load_workbook

    workbook = load_workbook(path, read_only=True, data_only=True)
    try:
        rows = workbook.active.iter_rows(values_only=True)
        header = [str(h).strip() if h is not None else "" for h in next(rows, [])]
        if "Image" not in header or "Description" not in header:
            raise DatasetError(f"{path} needs the columns 'Image' and 'Description', found {header}")
        key, text = header.index("Image"), header.index("Description")
        return {str(row[key]).strip(): str(row[text]) for row in rows
                if row and row[key] is not None and row[text] is not None}
    finally:
        workbook.close()


def write_text_table(path: Path, rows: list[tuple[str, str]]) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["Image", "Description"])
    for name, text in rows:
        sheet.append([name, text])
    workbook.save(path)


def _read_grey(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim == 3:
        if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
            return array[..., 0]
        return np.round(luminance(array)).astype(np.uint8)
    return array


def _image_for_mask(image_dir: Path, mask_name: str) -> Path | None:
    stem = Path(mask_name[5:] if mask_name.startswith("mask_") else mask_name).stem
    for candidate in ([image_dir / mask_name[5:]] if mask_name.startswith("mask_") else []) + \
            [image_dir / (stem + suffix) for suffix in _IMAGE_SUFFIXES]:
        if candidate.is_file():
            return candidate
    return None


def _split_group(split: str, stem: str) -> str:
    """The split group of an LViT image: its file stem, made a valid key (letters, digits, ``:_./-``; at most 128
    characters). A stem that had to change gets a hash of the original, so two images never share a group by
    accident (``c 3`` and ``c_3``)."""
    safe = re.sub(r"[^A-Za-z0-9:_./-]+", "_", stem)
    group = f"lvit-{split}-{safe}"
    if safe != stem or len(group) > 128:
        group = f"lvit-{split}-{safe[:90]}-{hashlib.sha256(stem.encode()).hexdigest()[:10]}"
    return group


def import_lvit(source: str | os.PathLike, destination: str | os.PathLike, modality: str = "OT",
                progress=None) -> AnnotationDataset:
    """Copy an LViT-layout folder into a new dataset; its Train/Val/Test folders keep their split.

    Every image is its own split group (LViT has no patient identifiers). ``progress(done,
    total)`` is called after each image when given. All or nothing: the dataset is built in a hidden
    folder next to ``destination`` and renamed into place at the end, so a file that cannot be imported
    (named in the DatasetError) leaves no partial dataset behind, and the same command runs again once it
    is fixed. ``destination`` must not exist, or be an empty folder.
    """
    source = Path(source)
    destination = Path(destination)
    folders = [(name, source / f"{name}_Folder") for name in LVIT_SPLITS if (source / f"{name}_Folder").is_dir()]
    if not folders:
        raise DatasetError(f"{source} has no Train_Folder, Val_Folder or Test_Folder: not an LViT layout")
    check_new_destination(destination)
    jobs = []
    for name, folder in folders:
        table_path = next((p for p in (folder / f"{name}_text.xlsx", source / f"{name}_text.xlsx") if p.is_file()), None)
        if table_path is None:
            raise DatasetError(f"{folder} has no {name}_text.xlsx (columns Image, Description)")
        texts = read_text_table(table_path)
        for mask_path in sorted((folder / "labelcol").glob("*")):
            if mask_path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            if mask_path.name not in texts:
                raise DatasetError(f"{table_path} has no Description for mask {mask_path.name}")
            image_path = _image_for_mask(folder / "img", mask_path.name)
            if image_path is None:
                raise DatasetError(f"no image in {folder / 'img'} for mask {mask_path.name}")
            jobs.append((LVIT_SPLITS[name], image_path, mask_path, texts[mask_path.name]))
    with staged_dataset(destination, modality, f"imported from LViT layout {source.name}") as dataset:
        for done, (split, image_path, mask_path, text) in enumerate(jobs, start=1):
            try:
                image = _read_grey(image_path)
                mask = _read_grey(mask_path) > 0
                dataset.add(image, mask, text, split=split, split_group=_split_group(split, image_path.stem),
                            modality=modality, units="raw",
                            source={"lvit_image": image_path.name, "lvit_mask": mask_path.name, "lvit_split": split})
            except MemoryError:
                raise
            except Exception as exc:  # Pillow on a damaged file, a mask of another size, a text left empty...
                message = " ".join(str(exc).split()) or type(exc).__name__
                raise DatasetError(f"cannot import {image_path} (mask {mask_path.name}): {message}; nothing was "
                                   f"imported into {destination}: fix or remove this pair, then import again") from exc
            if progress is not None:
                progress(done, len(jobs))
    return AnnotationDataset.open(destination)


def to_uint8(image: np.ndarray, units: str, window: dict | None,
             percentiles: tuple[float, float] = PreprocessConfig.percentiles) -> np.ndarray:
    """8-bit grey for PNG: raw 8-bit stays as is; HU through the window; else percentiles."""
    if units == "raw" and image.dtype == np.uint8:
        return image
    if units == "raw" and np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 255:
        return image.astype(np.uint8)
    if units == "HU" and window:
        low, high = window_limits(window["center"], window["width"])
    else:
        low, high = percentile_limits(image, percentiles)
    scaled = (image.astype(np.float32) - low) / max(high - low, 1e-6)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def export_lvit(dataset_dir: str | os.PathLike, output: str | os.PathLike, style: str = "qata",
                default_window: dict | None = None) -> dict[str, int]:
    """Write a dataset in LViT's layout; returns the count per split.

    style ``qata``: masks ``mask_<id>.png``; ``mosmed``: masks share the image's name.
    HU images without a stored window use ``default_window`` (else the dataset's default).
    """
    from PIL import Image

    if style not in ("qata", "mosmed"):
        raise DatasetError(f"style must be 'qata' or 'mosmed', got {style!r}")
    dataset = AnnotationDataset.open(dataset_dir)
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise DatasetError(f"{output} exists and is not empty; choose a new folder for the export")
    window_default = default_window or dataset.info.get("defaults", {}).get("window")
    counts = {}
    for folder_name, split in LVIT_SPLITS.items():
        records = dataset.select(split, expressions=True)
        if not records:
            continue
        folder = output / f"{folder_name}_Folder"
        (folder / "img").mkdir(parents=True, exist_ok=True)
        (folder / "labelcol").mkdir(parents=True, exist_ok=True)
        rows = []
        for record in records:
            image = np.load(dataset.path(record["image"]), allow_pickle=False)
            name = record.get("source", {}).get("lvit_image") or f"{record['id']}.png"
            name = Path(name).stem + ".png"
            if (folder / "img" / name).exists():
                name = f"{record['id']}.png"
            mask_name = f"mask_{name}" if style == "qata" else name
            Image.fromarray(to_uint8(image, record["units"], record.get("window") or window_default)).save(folder / "img" / name)
            Image.fromarray(dataset.read_mask(record).astype(np.uint8) * 255).save(folder / "labelcol" / mask_name)
            rows.append((mask_name, record["text"]))
        write_text_table(folder / f"{folder_name}_text.xlsx", rows)
        counts[split] = len(rows)
    return counts
