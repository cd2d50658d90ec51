"""The triage worklist: find the images to score, turn each :class:`~pneumoscan.result.Result` into a row, rank the
rows, write them.

* :mod:`.collect`: files and folders in, the files to score out (and what was skipped, and why).
* :mod:`.rows`: a result as a row, THE ranking, what a batch held and its drift verdict.
* :mod:`.write`: rows to CSV or JSON.

Decision support, not a diagnosis.
"""

from __future__ import annotations

from pneumoscan.constants import IMAGE_SUFFIXES, OTHER_IMAGE_SUFFIXES
from pneumoscan.worklist.collect import (
    HIDDEN,
    OTHER,
    SUBFOLDER,
    UNLISTED,
    Collected,
    Skipped,
    collect,
    collect_images,
    looks_like_image,
)
from pneumoscan.worklist.rows import (
    CONTEXT_COLUMNS,
    OPTIONAL_COLUMNS,
    RESULT_COLUMNS,
    batch_drift,
    context_columns,
    count_results,
    drift_message,
    rank,
    triage,
    worklist_row,
    worklist_rows,
)
from pneumoscan.worklist.write import csv_text, write_results

__all__ = ["CONTEXT_COLUMNS", "HIDDEN", "IMAGE_SUFFIXES", "OPTIONAL_COLUMNS", "OTHER", "OTHER_IMAGE_SUFFIXES",
           "RESULT_COLUMNS", "SUBFOLDER", "UNLISTED", "Collected", "Skipped", "batch_drift", "collect",
           "collect_images", "context_columns", "count_results", "csv_text", "drift_message", "looks_like_image", "rank", "triage", "worklist_row", "worklist_rows", "write_results"]
