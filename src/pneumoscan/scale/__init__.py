"""Scoring an archive on Ray Data: ``pneumoscan predict --engine ray``.

A folder, a glob or a manifest of millions of films is listed lazily (:mod:`.listing`), scored by a pool of Ray
actors that each load the model once (:mod:`.scorer`: the same decoding, gate and decision as ``predict``, one
:class:`~pneumoscan.result.Result` per file, its worklist row), and written as Parquet shards by the driver
(:mod:`.shards`), in a run folder that makes the run resumable (:mod:`.run`). :mod:`.job` puts them together.

Ray is imported only when a run starts (the ``ray`` extra); importing this package needs only pyarrow for the
shards. The default ``predict`` never imports it.
"""

from pneumoscan.scale.job import ArchiveReport, ArchiveRequest, archive_job

__all__ = ["ArchiveReport", "ArchiveRequest", "archive_job", "read_results"]


def read_results(run_dir: str, columns: list[str] | None = None):  # noqa: ANN201 - a pyarrow.Table
    """The results of an archive run as one Arrow table, one row per file (its latest): ``columns`` of the shards
    (default: the worklist's, :data:`pneumoscan.scale.shards.ROW_COLUMNS`, and the archive's own)."""
    import os

    from pneumoscan.scale.shards import ARCHIVE_COLUMNS, ROW_COLUMNS, SHARD_DIR, latest, read_shards

    cols = list(columns) if columns is not None else [*ROW_COLUMNS, *ARCHIVE_COLUMNS]
    if "path" not in cols:
        cols = ["path", *cols]
    return latest(read_shards(os.path.join(run_dir, SHARD_DIR), cols)).drop_columns(["_order"])
