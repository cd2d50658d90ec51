"""Labelled data: the index and the patient-level split (:mod:`.dataset`), and the decoded-image cache
(:mod:`.cache`)."""

from __future__ import annotations

from pneumoscan.constants import CLASS_NAMES
from pneumoscan.data.cache import MAX_FAILURES_LOGGED, ImageCache, build_cache, prune_cache
from pneumoscan.data.dataset import (
    DatasetIndex,
    Record,
    index_dataset,
    model_split,
    parse_name,
    split_by_patient,
    split_index,
    split_overlap,
    split_with_validation,
    summarize,
    write_manifest,
    write_scores_csv,
)
from pneumoscan.errors import DatasetError

__all__ = [
    "CLASS_NAMES", "MAX_FAILURES_LOGGED", "DatasetError", "DatasetIndex", "ImageCache", "Record", "build_cache",
    "index_dataset", "model_split", "parse_name", "prune_cache", "split_by_patient", "split_index", "split_overlap",
    "split_with_validation", "summarize", "write_manifest", "write_scores_csv",
]
