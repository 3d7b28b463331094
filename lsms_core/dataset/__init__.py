"""Annotation datasets (RefHL-Seg style): schema, the one reader/writer, validator, LViT layout."""

from .schema import FORMAT_NAME, FORMAT_VERSION, SPLITS, check_record
from .store import AnnotationDataset, DatasetError

__all__ = ["AnnotationDataset", "DatasetError", "FORMAT_NAME", "FORMAT_VERSION", "SPLITS", "check_record"]
