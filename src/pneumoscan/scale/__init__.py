"""Scoring an archive on Ray Data: ``pneumoscan predict --engine ray``.

A folder, a glob or a manifest of millions of films is listed lazily (:mod:`.listing`), scored by a pool of Ray
actors that each load the model once (:mod:`.scorer`: the same decoding, gate and decision as ``predict``, one
:class:`~pneumoscan.result.Result` per file, its worklist row), and written as Parquet shards by the driver
(:mod:`.shards`), in a run folder that makes the run resumable (:mod:`.run`). :mod:`.job` puts them together;
``docs/archive.md`` says how and why.

Ray is imported only when a run starts, pyarrow only when shards are read or written (both come with the ``ray``
extra). The default ``predict`` imports neither.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pneumoscan.scale.job import ArchiveReport, ArchiveRequest, archive_job

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pyarrow as pa

__all__ = ["ArchiveReport", "ArchiveRequest", "archive_job", "read_results"]


def read_results(run_dir: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """The results of an archive run, one row per file (its latest), as an Arrow table (``.to_pandas()`` for a
    DataFrame): ``path`` and ``columns`` of the shards (default: the worklist's,
    :data:`~pneumoscan.scale.shards.ROW_COLUMNS`, then :data:`~pneumoscan.scale.shards.ARCHIVE_COLUMNS`)."""
    from pneumoscan.scale.shards import ARCHIVE_COLUMNS, ROW_COLUMNS, SHARD_DIR, latest, read_shards

    cols = list(columns) if columns is not None else [*ROW_COLUMNS, *ARCHIVE_COLUMNS]
    if "path" not in cols:
        cols = ["path", *cols]
    return latest(read_shards(os.path.join(run_dir, SHARD_DIR), cols)).drop_columns(["_order"])
