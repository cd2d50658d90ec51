"""The run folder of an archive run: its settings, a lock, the shards and, once finished, its summary.

```
RUN_DIR/
  run.json          what the run is: the inputs, the model (version, operating points), the gate's settings, and
                    whether identifiers are pseudonymised (and under which secret: a check value, not the secret)
  .lock             held (flock) while a driver works here: a second driver on the same folder is refused
  shards/           the results: shard-000001.parquet, ... (pneumoscan.scale.shards)
  summary.json      written when a run has scored every file: counts, the drift verdict, the model (the run's
                    completion marker; a resumed run rewrites it)
```

Rerunning the same command resumes the run. A run folder holds one run: a rerun with other inputs, another model
or other settings is refused, with what differs, so that one folder never mixes two models' results.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from pneumoscan import __version__
from pneumoscan.errors import UsageError
from pneumoscan.scale.shards import SHARD_DIR, shard_files
from pneumoscan.utils import atomic_write_text, remove_stale_temps

__all__ = ["RUN_FORMAT", "RunFolder"]

#: The version of the run folder's layout and shard columns; a folder of another version is refused.
RUN_FORMAT = 1
#: The settings that must match for a rerun to resume a run (the others in run.json are for people).
_MUST_MATCH = ("format", "inputs", "manifests", "recursive", "model_version", "threshold", "temperature",
               "cause_threshold", "adult_age_years", "pseudonym_check")


class RunFolder:
    """An archive run's folder, opened for one driver (:meth:`open`; :meth:`close` or ``with`` releases it)."""

    def __init__(self, root: Path, lock: IO[str], settings: dict[str, Any], resumed: bool) -> None:
        self.root = root
        self._lock = lock
        self.settings = settings
        #: True when the folder held this run already (its shards are kept, its files not scored again).
        self.resumed = resumed

    @classmethod
    def open(cls, root: str | os.PathLike[str], settings: Mapping[str, Any]) -> RunFolder:
        """Create or resume the run in ``root`` with ``settings`` (JSON-safe; the keys of :data:`_MUST_MATCH`).

        Raises:
            UsageError: ``root`` is a file or cannot be written; another driver is working in it; it holds a run
                with other settings (the message names them), or is not a run folder but is not empty.
        """
        from pneumoscan.utils import check_writable_folder

        folder = check_writable_folder(root, "--run-dir")
        os.chmod(folder, 0o700)  # patient data: the owner's alone
        lock = open(folder / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            raise UsageError(f"another pneumoscan run is working in {folder}; wait for it to finish, or give "
                             "another --run-dir", "--run-dir") from exc
        try:
            doc = {"format": RUN_FORMAT, **settings}
            record = folder / "run.json"
            resumed = record.exists()
            if resumed:
                _check_same(folder, json.loads(record.read_text(encoding="utf-8")), doc)
            elif any(p.name not in (".lock",) for p in folder.iterdir()):
                raise UsageError(f"{folder} is not empty and holds no pneumoscan run (no run.json); give an empty "
                                 "or new folder", "--run-dir")
            else:
                atomic_write_text(record, json.dumps({**doc, "created": _now(), "pneumoscan": __version__},
                                                     indent=2) + "\n")
            (folder / SHARD_DIR).mkdir(mode=0o700, exist_ok=True)
            remove_stale_temps(folder / SHARD_DIR)
        except BaseException:
            lock.close()
            raise
        return cls(folder, lock, doc, resumed)

    @property
    def shards(self) -> Path:
        return self.root / SHARD_DIR

    def next_seq(self) -> int:
        """The number of the next shard: one after the last complete one."""
        last = 0
        for p in shard_files(self.shards):
            m = re.search(r"(\d+)", p.stem)
            last = max(last, int(m.group(1)) if m else 0)
        return last + 1

    def write_summary(self, doc: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` (atomically, owner-only): the run is complete."""
        path = self.root / "summary.json"
        atomic_write_text(path, json.dumps({"finished": _now(), **doc}, indent=2, default=str) + "\n")
        return path

    def clear_summary(self) -> None:
        """A run that scores again is not complete until it says so."""
        (self.root / "summary.json").unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the run's record when it has no shard (a run that found nothing to score), so that the folder can
        take another run."""
        if not shard_files(self.shards):
            (self.root / "run.json").unlink(missing_ok=True)
            if self.shards.is_dir() and not any(self.shards.iterdir()):
                self.shards.rmdir()

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_same(folder: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    differ = [k for k in _MUST_MATCH if old.get(k) != new.get(k)]
    if not differ:
        return
    what = "; ".join(f"{k}: {_short(old.get(k))} then, {_short(new.get(k))} now" for k in differ)
    raise UsageError(f"{folder} holds a run with other settings ({what}); rerun with the same inputs, model and "
                     "options to resume it, or give a new --run-dir", "--run-dir")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
