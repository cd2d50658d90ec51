"""The archive's results on disk: Parquet shards, one row per file, written by the driver alone.

A shard is ``shards/shard-NNNNNN.parquet`` in the run folder, written atomically (temporary file, fsync, rename:
:func:`pneumoscan.worklist.write.write_parquet`, owner-only): its final name is its completion marker, so a run
killed at any moment leaves complete shards and, at most, a temporary file that no reader looks at. One process
writes them (:class:`ShardWriter`, in the driver), in sequence; a file's row is never written twice in one run, and
a resumed run leaves out the files its complete shards hold (:class:`DoneIndex`). Where a file changed between two
runs, its newer row supersedes the older: :func:`latest` keeps one row per path, the last written.

The columns are the worklist's (:func:`pneumoscan.worklist.rows.worklist_row`, the one row of a
:class:`~pneumoscan.result.Result`; no ``rank``: ranking is over the whole archive) and :data:`ARCHIVE_FIELDS`: the
file's content hash, size and time as read, its place in the listing, when it was scored, and, for the drift check,
the features of a deterministic sample (:class:`DriftSample`).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.io import ImageContext
from pneumoscan.worklist.rows import CONTEXT_COLUMNS, RESULT_COLUMNS, context_columns
from pneumoscan.worklist.write import arrow_schema, write_parquet

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ARCHIVE_COLUMNS", "ROW_COLUMNS", "SHARD_DIR", "DoneIndex", "DriftSample", "ShardWriter", "latest",
           "path_key", "read_shards", "shard_files", "shard_schema"]

log = logging.getLogger("pneumoscan.scale")

#: The run folder's sub-folder of shards.
SHARD_DIR = "shards"
_PREFIX, _SUFFIX = "shard-", ".parquet"
#: The worklist columns a shard holds (what ``predict`` writes, without the rank, which is the archive's, and without
#: the outputs the archive engine does not make).
ROW_COLUMNS = tuple(c for c in RESULT_COLUMNS if c not in ("rank", "heatmap", "dicom_out", "created", "disclaimer"))
#: The archive's own columns: ``listing_index`` (the file's place in the listing: ties in the ranking go in this
#: order), ``sha256`` (64 hex digits of the file's bytes, hashed as they were read for decoding; null when the file
#: could not be opened), ``size_bytes`` and ``mtime_ns`` (the file's size and modification time, in ns, when it was
#: read), ``created`` (when it was scored, UTC), and for the drift check ``drift_priority`` (a hash of path and
#: content: the sample is the in-scope files of lowest priority), ``drift_features`` and ``drift_descriptor`` (the
#: model's pooled features and the intensity descriptors, float32; null outside the sample).
ARCHIVE_COLUMNS = ("listing_index", "sha256", "size_bytes", "mtime_ns", "created", "drift_priority", "drift_features",
                   "drift_descriptor")
#: Columns a scorer adds for the driver alone (never written): seconds spent per row reading and hashing, decoding,
#: and in the model and gate; and whether a file re-hashed on ``--rehash`` was found unchanged (then it has no row).
SCORER_COLUMNS = ("_t_read", "_t_decode", "_t_model", "_unchanged")
#: How often the writer commits a shard even when it holds fewer rows than asked, in seconds: the most work a killed
#: driver loses.
FLUSH_SECONDS = 60.0


def shard_schema(*, scorer: bool = False) -> pa.Schema:
    """The Arrow schema of a shard (with ``scorer`` also the :data:`SCORER_COLUMNS` a scorer returns)."""
    import pyarrow as pa

    floats = pa.list_(pa.float32())
    extra = [pa.field("listing_index", pa.int64()), pa.field("sha256", pa.string()),
             pa.field("size_bytes", pa.int64()), pa.field("mtime_ns", pa.int64()), pa.field("created", pa.string()),
             pa.field("drift_priority", pa.uint64()), pa.field("drift_features", floats),
             pa.field("drift_descriptor", floats)]
    if scorer:
        extra += [pa.field(n, pa.float64()) for n in SCORER_COLUMNS[:3]] + [pa.field("_unchanged", pa.bool_())]
    return arrow_schema(ROW_COLUMNS, extra)


def shard_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The complete shards in a run's shard folder, in the order they were written (temporary files are not
    shards)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX) and p.name.endswith(_SUFFIX))


def read_shards(folder: str | os.PathLike[str], columns: Sequence[str]) -> pa.Table:
    """``columns`` of every complete shard, in the order written, with ``_order`` (the row's place in that order);
    an empty table with those columns when there is none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = shard_schema()
    fields = [schema.field(c) for c in columns]
    parts = [pq.read_table(p, columns=list(columns)).cast(pa.schema(fields)) for p in shard_files(folder)]
    table = pa.concat_tables(parts) if parts else pa.schema(fields).empty_table()
    return table.append_column("_order", pa.array(np.arange(table.num_rows, dtype=np.int64)))


def latest(table: pa.Table) -> pa.Table:
    """One row per ``path``: the last written (largest ``_order``); the table as it is when no path repeats."""
    import pyarrow.compute as pc

    if table.num_rows == 0 or pc.count_distinct(table["path"]).as_py() == table.num_rows:
        return table
    last = table.group_by("path").aggregate([("_order", "max")])["_order_max"]
    return table.filter(pc.is_in(table["_order"], value_set=last))


def path_key(path: str) -> bytes:
    """The 16-byte key of a path in the listing and the shards (BLAKE2b): 128 bits, so that two of ten million paths
    share a key with a probability under 1e-24."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).digest()


class DoneIndex:
    """The files a run's complete shards hold with a content hash, by path key
    (:func:`pneumoscan.scale.listing.path_key`), with the size, time and hash recorded when each was read: sorted
    NumPy arrays (about 64 bytes a file), looked up a block at a time."""

    def __init__(self, keys: Sequence[bytes], sizes: Sequence[int], mtimes: Sequence[int],
                 sha256: Sequence[str]) -> None:
        order = np.argsort(np.asarray(keys, dtype="S16"), kind="stable")
        self.keys = np.asarray(keys, dtype="S16")[order]
        self.sizes = np.asarray(sizes, dtype=np.int64)[order]
        self.mtimes = np.asarray(mtimes, dtype=np.int64)[order]
        self.sha = np.asarray([bytes.fromhex(s) for s in sha256], dtype="S32")[order] if len(order) else \
            np.empty(0, dtype="S32")

    @classmethod
    def from_shards(cls, folder: str | os.PathLike[str]) -> DoneIndex:
        """The index of the latest row of every file the shards hold with a content hash (a file that could not be
        opened has none: it is tried again)."""
        import pyarrow.compute as pc

        t = latest(read_shards(folder, ["path", "sha256", "size_bytes", "mtime_ns"]))
        t = t.filter(pc.is_valid(t["sha256"]))
        return cls([path_key(p) for p in t["path"].to_pylist()], t["size_bytes"].to_numpy(zero_copy_only=False),
                   t["mtime_ns"].to_numpy(zero_copy_only=False), t["sha256"].to_pylist())

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """``(found, position)`` of each key: a bool array, and where a found key's record is."""
        query = np.asarray(keys, dtype="S16")
        pos = np.searchsorted(self.keys, query)
        found = pos < len(self.keys)
        found[found] = self.keys[pos[found]] == query[found]
        return found, pos

    def unchanged(self, position: int, size: int, mtime_ns: int) -> bool:
        """Whether a file of this ``size`` (bytes) and modification time (ns) is the one recorded at ``position``."""
        return int(self.sizes[position]) == size and int(self.mtimes[position]) == mtime_ns

    def sha256_at(self, position: int) -> str:
        """The content hash recorded at ``position`` (64 hex digits)."""
        return bytes(self.sha[position]).ljust(32, b"\0").hex()


class DriftSample:
    """The drift check's sample: the ``k`` in-scope files of lowest ``drift_priority`` (a hash of path and content,
    so uniform, and the same on every run), kept online.

    A row's features are stored only when it enters the running bottom-``k``; since a priority never changes, every
    row of the final bottom-``k`` was in the running one when it arrived, so the sample is exact while the shards
    hold features for only about ``k * (1 + ln(N / k))`` rows (about 5,500 of 10 million for ``k`` = 500)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heap: list[int] = []  # negated priorities: the root is the largest kept

    def seed(self, priorities: Iterable[int]) -> None:
        """Take in the priorities of rows already stored with features (a resumed run)."""
        for p in priorities:
            self.offer(int(p))

    def offer(self, priority: int) -> bool:
        """Whether a row of this priority enters the sample now (then store its features)."""
        if self.k <= 0:
            return False
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, -priority)
            return True
        if priority < -self._heap[0]:
            heapq.heapreplace(self._heap, -priority)
            return True
        return False


class ShardWriter:
    """The driver's side of the run: takes the scorers' tables as they come (:meth:`add`), keeps the drift sample's
    features and drops the others, pseudonymises the identifiers when asked, and commits a shard every
    ``shard_rows`` rows or :data:`FLUSH_SECONDS` (:meth:`commit`; :meth:`close` commits the rest)."""

    def __init__(self, folder: str | os.PathLike[str], *, first_seq: int, shard_rows: int,
                 sample: DriftSample | None, pseudonym_key: bytes | None = None,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.folder = Path(folder)
        self.seq = first_seq
        self.shard_rows = max(1, shard_rows)
        self.sample = sample
        self.key = pseudonym_key
        self.flush_seconds = flush_seconds
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._last_commit = time.monotonic()
        #: Rows committed, shards written, files found unchanged by ``--rehash``, and seconds per stage (summed
        #: over the scorers: ``read`` (reading and hashing), ``decode``, ``model`` (model and gate)).
        self.n_rows = 0
        self.n_shards = 0
        self.n_unchanged = 0
        self.stage_seconds = {"read": 0.0, "decode": 0.0, "model": 0.0}

    def add(self, table: pa.Table) -> None:
        """One table of scored rows (the :func:`shard_schema` with ``scorer`` columns)."""
        import pyarrow.compute as pc

        for name, stage in zip(SCORER_COLUMNS[:3], ("read", "decode", "model")):
            self.stage_seconds[stage] += float(pc.sum(table[name]).as_py() or 0.0)
        unchanged = table["_unchanged"].fill_null(False)
        self.n_unchanged += int(pc.sum(unchanged).as_py() or 0)
        table = table.filter(pc.invert(unchanged)).drop_columns(list(SCORER_COLUMNS))
        table = self._keep_sample(table)
        if self.key is not None:
            table = _pseudonymised(table, self.key)
        if table.num_rows:
            self._buffer.append(table)
            self._buffered += table.num_rows
        if self._buffered >= self.shard_rows or (
                self._buffered and time.monotonic() - self._last_commit >= self.flush_seconds):
            self.commit()

    def commit(self) -> Path | None:
        """Write the rows held as the next shard; returns its path (None when nothing is held)."""
        import pyarrow as pa

        self._last_commit = time.monotonic()
        if not self._buffered:
            return None
        table = pa.concat_tables(self._buffer).cast(shard_schema())
        path = write_parquet(table, self.folder / f"{_PREFIX}{self.seq:06d}{_SUFFIX}")
        self.seq += 1
        self.n_shards += 1
        self.n_rows += table.num_rows
        self._buffer, self._buffered = [], 0
        return path

    def close(self) -> None:
        self.commit()

    def _keep_sample(self, table: pa.Table) -> pa.Table:
        """Null the features of the rows that do not enter the drift sample."""
        import pyarrow as pa
        import pyarrow.compute as pc

        priorities = table["drift_priority"].to_pylist()
        keep = [p is not None and self.sample is not None and self.sample.offer(p) for p in priorities]
        if all(keep):
            return table
        mask = pa.array(keep, pa.bool_())
        for name in ("drift_features", "drift_descriptor"):
            col = table[name]
            table = table.set_column(table.schema.get_field_index(name), name,
                                     pc.if_else(mask, col, pa.nulls(table.num_rows, col.type)))
        return table


def _pseudonymised(table: pa.Table, key: bytes) -> pa.Table:
    """The identifiers replaced by keyed pseudonyms, as :func:`pneumoscan.worklist.rows.context_columns` makes them
    (the same as ``predict --pseudonymise`` with the same secret)."""
    import pyarrow as pa

    values = {c: table[c].to_pylist() for c in CONTEXT_COLUMNS}
    mapped: dict[str, list[Any]] = {c: [] for c in CONTEXT_COLUMNS}
    for i in range(table.num_rows):
        row = context_columns(ImageContext.from_dict({c: values[c][i] for c in CONTEXT_COLUMNS}), key)
        for c in CONTEXT_COLUMNS:
            mapped[c].append(row[c])
    for c in CONTEXT_COLUMNS:
        table = table.set_column(table.schema.get_field_index(c), c, pa.array(mapped[c], pa.string()))
    return table
