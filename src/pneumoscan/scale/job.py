"""``pneumoscan predict --engine ray``: score an archive (a folder, a glob, a manifest of millions of files) with Ray
Data, resumably, and give the results ``predict`` gives.

:func:`archive_job` lists the files lazily (:mod:`pneumoscan.scale.listing`), leaves out those a previous run of the
same command scored already, hands the rest to Ray Data in waves of blocks (``from_arrow_refs``), scores them with
``map_batches`` over a pool of :class:`~pneumoscan.scale.scorer.ArchiveScorer` actors
(``compute=ActorPoolStrategy(size=...)``: one model per actor, loaded once), and commits the rows as they arrive as
Parquet shards (:class:`~pneumoscan.scale.shards.ShardWriter`). At the end it counts the results, runs the drift
check once over the in-scope films (on a deterministic sample of at most 500, the most the check uses), and writes
the worklist (CSV or JSON, ranked by :func:`pneumoscan.worklist.rows.rank`) when asked.

Without an address Ray starts a local instance on this machine (``ray.init()``); with one it joins that cluster,
whose nodes must see the files and the model at the same paths. Decision support, not a diagnosis.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.errors import MissingExtraError, PneumoscanError, UsageError
from pneumoscan.scale.listing import Listing, iter_paths, pending_blocks
from pneumoscan.scale.run import RunFolder
from pneumoscan.scale.shards import ROW_COLUMNS, DoneIndex, DriftSample, ShardWriter, latest, read_shards
from pneumoscan.worklist.collect import skipped_summary
from pneumoscan.worklist.job import pseudonym_key, summary_line
from pneumoscan.worklist.rows import batch_drift, rank
from pneumoscan.worklist.write import write_results

if TYPE_CHECKING:
    import pyarrow as pa

    from pneumoscan.gate.drift import DriftResult
    from pneumoscan.inference.predictor import Predictor

__all__ = ["ArchiveReport", "ArchiveRequest", "archive_job", "RAY_INSTALL"]

log = logging.getLogger("pneumoscan.scale")

#: How to add the ``ray`` extra.
RAY_INSTALL = "bash scripts/setup.sh ray (in a checkout) or pip install 'pneumoscan[ray]'"


@dataclass(frozen=True)
class ArchiveRequest:
    """What ``pneumoscan predict --engine ray`` was asked to do (see ``pneumoscan predict --help``).

    ``threads``: ONNX Runtime threads per actor (the CPUs Ray reserves for each); ``actors``: how many (default: the
    cluster's CPUs over ``threads``); ``shard_rows``: rows per shard; ``block_rows``: files per block handed to an
    actor (default ``batch_size``: a small run still keeps every actor busy); ``wave_files``: files listed before a
    wave of scoring starts."""

    paths: Sequence[Path]
    run_dir: Path
    manifests: Sequence[Path] = ()
    model: Path | None = None
    recursive: bool = False
    out: Path | None = None
    overwrite: bool = False
    batch_size: int = 64
    threads: int = 1
    actors: int | None = None
    address: str | None = None
    progress: bool = False
    adult_age: float = 18.0
    pseudonymise: bool = False
    secret_file: Path | None = None
    rehash: bool = False
    shard_rows: int = 5000
    block_rows: int | None = None
    wave_files: int = 500_000


@dataclass
class ArchiveReport:
    """What :func:`archive_job` did: the counts of the whole run folder (``counts``, ``n_positive``), the drift
    verdict (or why there is none), the lines a person reads, and this invocation's work: files listed, left out as
    scored before (``n_done``), scored now (``n_scored``), found unchanged by ``--rehash``, shards written, and seconds
    spent (``seconds``: listing, scoring, finishing; ``stage_seconds``: read, decode, model, summed over actors)."""

    counts: dict[str, int]
    n_positive: int
    drift: DriftResult | None
    drift_reason: str
    site_line: str
    summary: str
    skipped_note: str
    info: dict[str, Any]
    run_dir: Path
    resumed: bool = False
    n_listed: int = 0
    n_done: int = 0
    n_scored: int = 0
    n_unchanged: int = 0
    n_shards: int = 0
    n_actors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    worklist: Path | None = None

    @property
    def any_read(self) -> bool:
        """True when at least one image was read (scored, or not assessed): the command's success."""
        return self.counts["n_in_scope"] + self.counts["n_out_of_scope"] > 0


def archive_job(req: ArchiveRequest) -> ArchiveReport:
    """Score ``req``'s files into ``req.run_dir`` (resuming the run there), then count, check drift, write the
    worklist; see the module docstring.

    Raises:
        UsageError: bad options, no files found, a run folder in use or holding another run, an output that exists.
        MissingExtraError: Ray is not installed (the ``ray`` extra).
        CheckpointError: the model file cannot be used.
        PneumoscanError: the cluster failed (the committed shards are kept: rerun to resume).
    """
    from pneumoscan.inference.predictor import Predictor, RuntimeOptions, default_model_path
    from pneumoscan.inference.provenance import provenance

    _check(req)
    ray = _import_ray()
    key = pseudonym_key(req)
    model_path = Path(req.model) if req.model is not None else Path(default_model_path())
    predictor = Predictor.from_checkpoint(model_path, options=RuntimeOptions(threads=1), adult_age_years=req.adult_age)
    settings = _settings(req, predictor, key)
    seconds: dict[str, float] = {"listing": 0.0, "scoring": 0.0, "finishing": 0.0}
    listing = Listing()
    with RunFolder.open(req.run_dir, settings) as run:
        done = DoneIndex.from_shards(run.shards) if run.resumed else None
        drift_check = predictor.drift
        sample = DriftSample(drift_check.max_batch if drift_check is not None else 0)
        if run.resumed:  # the running sample, as the shards' rows that carry features left it
            import pyarrow.compute as pc

            prior = latest(read_shards(run.shards, ["path", "drift_priority", "drift_features"]))
            sample.seed(prior.filter(pc.is_valid(prior["drift_features"]))["drift_priority"].to_pylist())
        run.clear_summary()
        writer = ShardWriter(run.shards, first_seq=run.next_seq(), shard_rows=req.shard_rows, sample=sample,
                             pseudonym_key=key)
        started = _connect(ray, req.address)
        try:
            n_actors = _actors(ray, req)
            paths = iter_paths(req.paths, req.manifests, recursive=req.recursive, listing=listing)
            blocks = pending_blocks(paths, listing, block_rows=req.block_rows or req.batch_size, done=done,
                                    rehash=req.rehash)
            scorer_args = {"model": str(model_path.resolve()), "threads": req.threads, "adult_age": req.adult_age,
                           "keep_features": drift_check is not None}
            for wave in _waves(ray, blocks, req.wave_files, seconds):
                t0 = time.perf_counter()
                _score_wave(ray, wave, scorer_args, req, min(n_actors, len(wave)), writer)
                seconds["scoring"] += time.perf_counter() - t0
        except KeyboardInterrupt:
            writer.close()  # the rows received are complete: keep them
            log.warning("interrupted: %d row(s) kept in %s; rerun the same command to resume", writer.n_rows,
                        run.shards)
            raise
        except (PneumoscanError, OSError):
            writer.close()
            raise
        except Exception as exc:  # the cluster's errors (an actor that could not start, a node lost...)
            writer.close()
            raise PneumoscanError(f"the Ray run stopped: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}; "
                                  f"{writer.n_rows} row(s) are kept in {run.shards}: rerun the same command to resume"
                                  ) from exc
        finally:
            if started:
                ray.shutdown()
        writer.close()
        if listing.n_listed == 0:
            if not run.resumed:
                run.discard()  # nothing was scored: the folder holds no run, and other inputs may use it
            raise UsageError(f"no image files found in {', '.join(map(str, [*req.paths, *req.manifests]))}"
                             + ("" if req.recursive else " (use --recursive to search sub-folders)"))
        t0 = time.perf_counter()
        counts, n_pos = _counts(run.shards)
        drift, why = _drift(predictor, run.shards, counts, n_pos, sample.k)
        prov = provenance(predictor.meta)
        info = {"engine": "ray", "model": predictor.model_name, "model_file": str(model_path),
                "model_version": predictor.version, "threshold": predictor.threshold,
                "temperature": predictor.temperature, **prov, "adult_age_years": req.adult_age,
                "pseudonymised": req.pseudonymise, **counts, "drift": None if drift is None else drift.to_dict(),
                "drift_reason": why, "run_dir": str(run.root)}
        if req.out is not None:
            write_results(_worklist_rows(run.shards), req.out, info=info)
        seconds["finishing"] = time.perf_counter() - t0
        run.write_summary({**info, "n_positive": n_pos, "results": str(run.shards)})
    summary = (summary_line([], counts, predictor.threshold, n_positive=n_pos) + f"; scores {prov['score_calibration']}"
               + (f" -> {req.out}" if req.out is not None else "") + f"; Parquet shards in {run.shards}")
    skipped = skipped_summary(listing.skipped)
    return ArchiveReport(counts=counts, n_positive=n_pos, drift=drift, drift_reason=why, site_line=prov["provenance"],
                         summary=summary, skipped_note=skipped, info=info, run_dir=run.root, resumed=run.resumed,
                         n_listed=listing.n_listed, n_done=listing.n_done, n_scored=writer.n_rows,
                         n_unchanged=writer.n_unchanged, n_shards=writer.n_shards, n_actors=n_actors,
                         seconds=seconds, stage_seconds=dict(writer.stage_seconds), worklist=req.out)


def _check(req: ArchiveRequest) -> None:
    if not req.paths and not req.manifests:
        raise UsageError("give image files, folders, globs or --manifest FILE")
    for name, value in (("--batch-size", req.batch_size), ("--threads", req.threads), ("--actors", req.actors or 1),
                        ("--shard-rows", req.shard_rows)):
        if value < 1:
            raise UsageError(f"must be at least 1, got {value}", name)
    if not req.adult_age > 0:
        raise UsageError(f"must be a positive number of years, got {req.adult_age:g}", "--adult-age")
    if req.secret_file is not None and not req.pseudonymise:
        raise UsageError("--secret-file is the secret for --pseudonymise; pass --pseudonymise too")
    for manifest in req.manifests:
        if not Path(manifest).is_file():
            raise UsageError(f"{manifest} is not a file", "--manifest")
    out = req.out
    if out is not None:
        from pneumoscan.utils import check_writable_folder

        if out.is_dir():
            raise UsageError(f"{out} is a folder; give the .csv or .json file to write", "--out")
        if out.suffix.lower() not in (".csv", ".json"):
            raise UsageError(f"must end in .csv or .json, got {out.name!r}", "--out")
        check_writable_folder(out.parent, "--out")
        if out.exists() and not req.overwrite:
            raise UsageError(f"{out} already exists; pass --overwrite to replace it, or choose another file", "--out")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the extra's Data library, not only the core
    except ImportError as exc:
        raise MissingExtraError(f"--engine ray needs Ray Data (the 'ray' extra; {exc}); install it with {RAY_INSTALL}"
                                ) from exc
    return ray


def _settings(req: ArchiveRequest, predictor: Predictor, key: bytes | None) -> dict[str, Any]:
    """What run.json records; a resume must match it (a check value stands for the pseudonym secret: the
    pseudonym of a fixed text, which tells one secret from another and reveals neither)."""
    from pneumoscan.pseudonym import pseudonymise

    return {"inputs": [os.path.abspath(p) for p in req.paths], "manifests": [os.path.abspath(p) for p in req.manifests],
            "recursive": req.recursive, "model": predictor.model_name, "model_file": str(predictor.path),
            "model_version": predictor.version, "threshold": predictor.threshold,
            "temperature": predictor.temperature, "cause_threshold": predictor.info.cause_threshold,
            "adult_age_years": req.adult_age, "pseudonymised": key is not None,
            "pseudonym_check": None if key is None else pseudonymise("pneumoscan archive run", key)}


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, or start a local instance; reuse a connection this process has. Returns
    whether this call connected (and so must disconnect)."""
    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in ("PNEUMOSCAN_ONNX_CACHE", "PNEUMOSCAN_MODEL") if os.environ.get(k)}
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": {"env_vars": env} if env else None}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines (plans, timings) are for Ray's users
    return True


def _actors(ray: Any, req: ArchiveRequest) -> int:
    """How many scorer actors: ``req.actors``, or as many as the cluster's CPUs hold at ``req.threads`` each (a pool
    larger than that would wait for CPUs that never come free).

    Raises:
        UsageError: ``req.threads`` is more than the cluster's CPUs.
    """
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if req.threads > cpus:
        raise UsageError(f"the Ray cluster has {cpus} CPU(s); each actor needs --threads {req.threads}", "--threads")
    fit = cpus // req.threads
    if req.actors is not None and req.actors > fit:
        log.warning("--actors %d: the cluster's %d CPU(s) hold %d actor(s) of %d thread(s); using %d", req.actors,
                    cpus, fit, req.threads, fit)
    return min(req.actors or fit, fit)


def _waves(ray: Any, blocks: Iterator[pa.Table], wave_files: int, seconds: dict[str, float]) -> Iterator[list[Any]]:
    """The pending blocks, put in the object store, grouped into waves of about ``wave_files`` files: the driver holds
    one block at a time, and scoring starts before a long listing ends."""
    wave: list[Any] = []
    n = 0
    t0 = time.perf_counter()
    for block in blocks:
        wave.append(ray.put(block))
        n += block.num_rows
        if n >= wave_files:
            seconds["listing"] += time.perf_counter() - t0
            yield wave
            wave, n, t0 = [], 0, time.perf_counter()
    seconds["listing"] += time.perf_counter() - t0
    if wave:
        yield wave


def _score_wave(ray: Any, refs: list[Any], scorer_args: dict[str, Any], req: ArchiveRequest, n_actors: int,
                writer: ShardWriter) -> None:
    """One wave through ``map_batches`` over an actor pool; each table of rows goes to the writer as it arrives."""
    from tqdm import tqdm

    from pneumoscan.scale.scorer import ArchiveScorer

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts films; Ray's count blocks per operator
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know
    ctx.print_on_execution_start = False
    ds = ray.data.from_arrow_refs(refs).map_batches(
        ArchiveScorer, fn_constructor_kwargs=scorer_args, batch_size=req.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=req.threads)
    with tqdm(unit="img", desc="archive", disable=None if req.progress else True) as bar:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(table)
            bar.update(table.num_rows)


def _counts(shards: Path) -> tuple[dict[str, int], int]:
    """:func:`pneumoscan.worklist.rows.count_results`'s counts over the latest row of every file, and how many were
    flagged."""
    import pyarrow.compute as pc

    t = latest(read_shards(shards, ["path", "probability", "in_scope", "scope_caution", "positive"]))
    read = pc.is_valid(t["probability"])
    in_scope = pc.and_(read, pc.fill_null(t["in_scope"], False))
    n_read, n_in = int(pc.sum(read).as_py() or 0), int(pc.sum(in_scope).as_py() or 0)
    caution = pc.and_(in_scope, pc.not_equal(pc.fill_null(t["scope_caution"], ""), ""))
    n_pos = int(pc.sum(pc.and_(in_scope, pc.fill_null(t["positive"], False))).as_py() or 0)
    return ({"n_files": t.num_rows, "n_in_scope": n_in, "n_cautioned": int(pc.sum(caution).as_py() or 0),
             "n_out_of_scope": n_read - n_in, "n_unreadable": t.num_rows - n_read}, n_pos)


def _drift(predictor: Predictor, shards: Path, counts: dict[str, int], n_pos: int,
           k: int) -> tuple[DriftResult | None, str]:
    """The drift verdict over the in-scope films: :func:`pneumoscan.worklist.rows.batch_drift` on the sample (the
    ``k`` in-scope files of lowest priority, all of them when there are at most ``k``: then exactly ``predict``'s
    verdict), reported for every in-scope film (``n_images``, and the flag rate of them all)."""
    import pyarrow.compute as pc

    from pneumoscan.result import Result

    t = latest(read_shards(shards, ["path", "probability", "in_scope", "drift_priority", "drift_features",
                                    "drift_descriptor"]))
    t = t.filter(pc.and_(pc.is_valid(t["drift_features"]), pc.fill_null(t["in_scope"], False)))
    t = t.sort_by("drift_priority").slice(0, max(k, 0))
    sample = [Result.scored(p, prob, predictor.identity, in_scope=True, features=np.asarray(f, np.float32),
                            descriptor=np.asarray(d, np.float32))
              for p, prob, f, d in zip(t["path"].to_pylist(), t["probability"].to_pylist(),
                                       t["drift_features"].to_pylist(), t["drift_descriptor"].to_pylist())]
    if predictor.reference is not None and counts["n_in_scope"] > len(sample) and len(sample) < k:
        log.warning("the drift sample holds %d of %d in-scope film(s)", len(sample), counts["n_in_scope"])
    drift, why = batch_drift(predictor, sample)
    if drift is None or counts["n_in_scope"] == drift.n_images:
        return drift, why
    return dataclasses.replace(drift, n_images=counts["n_in_scope"], flag_rate=n_pos / counts["n_in_scope"]), why


def _worklist_rows(shards: Path) -> list[dict[str, Any]]:
    """The latest row of every file as worklist rows, in listing order, ranked (:func:`~pneumoscan.worklist.rows.rank`):
    what ``predict`` writes. Held in memory: about 1 to 2 KB a file."""
    t = latest(read_shards(shards, [*ROW_COLUMNS, "listing_index"])).sort_by("listing_index")
    return rank([{"rank": None, **row} for row in t.drop_columns(["listing_index", "_order"]).to_pylist()])
