"""All or nothing for every importer (import-lvit here, training/importers/): a new dataset is built in a
hidden folder next to its destination and renamed into place only when the whole import succeeded."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_write_bytes
from .store import AnnotationDataset, DatasetError


def check_new_destination(destination: Path) -> None:
    """DatasetError unless ``destination`` is missing or an empty folder (an import never adds to a dataset)."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise DatasetError(f"{destination} exists and is not empty; import into a new folder")


@contextmanager
def staged_dataset(destination: str | os.PathLike, modality: str, description: str,
                   provenance: dict | None = None) -> Iterator[AnnotationDataset]:
    """A new dataset to fill, at ``destination`` once the ``with`` block ends without an exception; on any
    exception (a file that cannot be read, Ctrl-C) nothing is left behind and the same import runs again once
    the cause is fixed. ``provenance`` (source, licence, ...) goes into ``dataset.json``."""
    destination = Path(destination)
    check_new_destination(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.importing-{uuid.uuid4().hex[:12]}"
    try:
        dataset = AnnotationDataset.create(staging, modality=modality, description=description)
        if provenance:
            dataset.info["provenance"] = provenance
            atomic_write_bytes(staging / "dataset.json", (json.dumps(dataset.info, indent=2) + "\n").encode())
        yield dataset
        if destination.exists():
            destination.rmdir()  # an empty folder: replaced by the finished dataset
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
