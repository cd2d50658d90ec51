"""The archive's scorer: the class Ray Data runs as a pool of actors, each with one model loaded once.

Each file goes the way ``predict`` takes it, in one place: its bytes are read once (and hashed as they are, SHA-256,
so the content hash costs no second read), decoded by :func:`pneumoscan.inference.files.decode_item` (the one path
to the model's square, :func:`pneumoscan.preprocessing.read_film`), gated and decided by
:meth:`pneumoscan.inference.predictor.Predictor.assess_batch` (one :class:`~pneumoscan.result.Result` per file) and
written out as its worklist row (:func:`pneumoscan.worklist.rows.worklist_row`). A file that cannot be read or
scored is a row with its error; nothing a file does stops the batch.

The actor runs ONNX Runtime with ``threads`` intra-op threads (its share of the node's CPUs, which is what Ray
reserves for it) and decodes in its own thread, so ``n`` actors use about ``n * threads`` cores.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pneumoscan.worklist.rows import worklist_row

if TYPE_CHECKING:
    import pyarrow as pa

    from pneumoscan.result import Result

__all__ = ["MAX_READ_BYTES", "ArchiveScorer", "FileRead", "drift_priority", "read_file"]

log = logging.getLogger("pneumoscan.scale")

#: Files larger than this (bytes) are hashed as a stream and decoded from their path (the decoder then refuses
#: them or reads only what it needs) instead of being held in memory whole.
MAX_READ_BYTES = 256 << 20


@dataclass(frozen=True)
class FileRead:
    """One file as read: ``data`` (its bytes; None when too large to hold or unreadable), ``sha256`` (64 hex digits;
    None when it could not be opened), ``size`` (bytes) and ``mtime_ns`` from the open file, and ``seconds``
    spent."""

    data: bytes | None
    sha256: str | None
    size: int | None
    mtime_ns: int | None
    seconds: float


def read_file(path: str) -> FileRead:
    """Read and hash one file; an error (missing, a folder, no permission...) gives a :class:`FileRead` without
    hash, and decoding the path then says what is wrong in the words ``predict`` uses."""
    start = time.perf_counter()
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > MAX_READ_BYTES:
                digest = hashlib.sha256()
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                data, sha = None, digest.hexdigest()
            else:
                data = fh.read()
                sha = hashlib.sha256(data).hexdigest()
    except OSError:
        return FileRead(None, None, None, None, time.perf_counter() - start)
    return FileRead(data, sha, st.st_size, st.st_mtime_ns, time.perf_counter() - start)


def drift_priority(path: str, sha256: str) -> int:
    """A file's place in the drift sample (:class:`pneumoscan.scale.shards.DriftSample`): 64 bits of a hash of its
    path and content, uniform and the same on every run."""
    return int.from_bytes(hashlib.blake2b(f"{sha256}\0{path}".encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "big")


class ArchiveScorer:
    """Scores batches of the archive's listing (``path``, ``listing_index``, ``expected_sha256``) into shard rows
    (:func:`pneumoscan.scale.shards.shard_schema` with the scorer's columns). Built once per actor: the model is
    loaded here (``model``: the path of a ``.safetensors`` checkpoint or ``.onnx`` export, the same on every node).

    ``keep_features``: return the pooled features and intensity descriptors of in-scope films (the driver keeps
    those of the drift sample); off for a model without a reference, which has no drift check."""

    def __init__(self, model: str, *, threads: int = 1, adult_age: float = 18.0, keep_features: bool = True) -> None:
        from pneumoscan.inference.predictor import Predictor, RuntimeOptions

        self.predictor = Predictor.from_checkpoint(model, options=RuntimeOptions(threads=threads, decode_workers=0),
                                                   adult_age_years=adult_age)
        self.keep_features = keep_features

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        from pneumoscan.inference.files import decode_item
        from pneumoscan.scale.shards import shard_schema

        paths: list[str] = batch["path"].to_pylist()
        index: list[int] = batch["listing_index"].to_pylist()
        expected: list[str | None] = batch["expected_sha256"].to_pylist()
        reads = [read_file(p) for p in paths]
        unchanged = [e is not None and r.sha256 == e for r, e in zip(reads, expected)]
        todo = [i for i in range(len(paths)) if not unchanged[i]]
        t0 = time.perf_counter()
        spec = self.predictor.preprocessing
        decoded = [decode_item(reads[i].data if reads[i].data is not None else paths[i], spec, raise_errors=False,
                               name=paths[i])
                   for i in todo]
        t1 = time.perf_counter()
        results = self._assess([paths[i] for i in todo], decoded)
        t2 = time.perf_counter()
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        n = max(1, len(todo))
        rows: list[dict[str, Any]] = []
        for i, result in zip(todo, results):
            rows.append(self._row(result, reads[i], index[i], created,
                                  (reads[i].seconds, (t1 - t0) / n, (t2 - t1) / n)))
        for i in range(len(paths)):  # known already (--rehash): no row, only the driver's count
            if unchanged[i]:
                rows.append({"path": paths[i], "listing_index": index[i], "_unchanged": True,
                             "_t_read": reads[i].seconds, "_t_decode": 0.0, "_t_model": 0.0})
        return pa.Table.from_pylist(rows, schema=shard_schema(scorer=True))

    def _assess(self, names: Sequence[str], decoded: Sequence[Any]) -> list[Result]:
        """:meth:`~pneumoscan.inference.predictor.Predictor.assess_batch`; should the batch fail as a whole, each
        file alone, so that the failure is only its own row's error."""
        from pneumoscan.result import Result

        try:
            return self.predictor.assess_batch(names, decoded)
        except Exception:  # noqa: BLE001 - one file's failure must not cost the others their scores
            log.warning("a batch of %d file(s) failed; scoring them one by one", len(names), exc_info=True)
        out = []
        for name, d in zip(names, decoded):
            try:
                out += self.predictor.assess_batch([name], [d])
            except Exception as exc:  # noqa: BLE001
                detail = " ".join(str(exc).split())[:300] or type(exc).__name__
                out.append(Result.unread(name, f"the image could not be scored ({type(exc).__name__}: {detail})",
                                         self.predictor.identity))
        return out

    def _row(self, result: Result, read: FileRead, index: int, created: str,
             seconds: tuple[float, float, float]) -> dict[str, Any]:
        row = worklist_row(result)
        del row["rank"]
        row.update(listing_index=index, sha256=read.sha256, size_bytes=read.size, mtime_ns=read.mtime_ns,
                   created=created, _t_read=seconds[0], _t_decode=seconds[1], _t_model=seconds[2], _unchanged=False)
        if self.keep_features and result.assessed and result.features is not None and read.sha256 is not None:
            row["drift_priority"] = drift_priority(result.source, read.sha256)
            row["drift_features"] = result.features.astype("float32").ravel().tolist()
            row["drift_descriptor"] = (None if result.descriptor is None
                                       else result.descriptor.astype("float32").ravel().tolist())
        return row
