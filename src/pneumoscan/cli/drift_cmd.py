"""``pneumoscan drift``: does a batch of a site's images still look like the training data to the model?

Registered on the app by the package. The statistic and its threshold are :mod:`pneumoscan.drift`'s; this command
scores the files, keeps the in-scope ones, runs the check and reports it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import ADULT_AGE_DEFAULT, check_adult_age, console, writable_folder
from pneumoscan.cli.common import click_errors as _click_errors


def drift_cmd(
    paths: Annotated[list[Path], typer.Argument(help="A batch of one site's images (JPEG, PNG, DICOM) and/or folders of them: at least 50 in scope.", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.safetensors) or ONNX export that carries a reference of its training films. Default: $PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also scan sub-folders.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the verdict as JSON to this file (replaced if it exists).")] = None,
    adult_age: Annotated[float, typer.Option("--adult-age", metavar="YEARS", help="A DICOM PatientAge at or above this many years puts the image out of scope (not counted).")] = ADULT_AGE_DEFAULT,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for the model (default: all cores).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Check whether a batch of a site's images still looks like the training data to the model (drift).

    The images are scored and gated; only those in scope count, and at least 50 are needed. They are compared
    with the reference of training films that the model file carries (a model without one is refused). The
    statistic is the larger of two kernel two-sample tests (maximum mean discrepancy, MMD, Gaussian kernel),
    each divided by its own 95th percentile under no shift: one on the model's pooled image features (a site
    can shift these without its flag rate moving), one on the images' intensity percentiles, mean and
    standard deviation (exposure, contrast). The threshold is set by resampling batches of the same size from
    the model's held-out validation films, so that a batch like the training data is called shifted at most
    5% of the time. Large batches are subsampled (seeded) to at most 500 images.

    A shifted batch means the model's results on these images may not hold: calibrate it on this site's films
    (pneumoscan calibrate). Exit code 0 when the check ran (shifted or not), 1 when it cannot run (fewer than
    50 in-scope images, a model without a reference, a bad model file), 2 on a bad invocation.
    """
    from pneumoscan.drift import MIN_IMAGES
    from pneumoscan.predict import Predictor, RuntimeOptions, default_model_path
    from pneumoscan.utils import atomic_write_text
    from pneumoscan.worklist import batch_drift, collect, count_results, drift_message

    if json_out is not None:
        if json_out.is_dir():
            raise typer.BadParameter(f"{json_out} is a folder; give the .json file to write", param_hint="--json")
        if json_out.suffix.lower() != ".json":
            raise typer.BadParameter(f"must end in .json, got {json_out.name!r}", param_hint="--json")
        writable_folder(json_out.parent, "--json")
    check_adult_age(adult_age)
    model_path = model if model is not None else default_model_path()
    collected = collect(paths, recursive=recursive)
    if not collected.files:
        hint = "" if recursive else " (use --recursive to search sub-folders)"
        raise _click_errors.UsageError(f"no image files found in {', '.join(map(str, paths))}{hint}")
    predictor = Predictor.from_checkpoint(model_path, options=RuntimeOptions(threads=threads),
                                          adult_age_years=adult_age)
    if predictor.reference is None:
        raise _click_errors.ClickException(
            f"{model_path} carries no reference of its training films, so there is nothing to compare the images "
            f"with. Add one without retraining (from the pneumoscan source tree): python scripts/build_reference.py "
            f"--model {model_path} --data TRAINING_FOLDER --out NEW.safetensors, then pass --model NEW.safetensors")
    results = predictor.score_files(collected.files, batch_size=batch_size, progress=progress)
    counts = count_results(results)
    where = ", ".join(map(str, paths))
    if counts["n_in_scope"] < MIN_IMAGES:
        raise _click_errors.ClickException(
            f"only {counts['n_in_scope']} in-scope image(s) found in {where} ({counts['n_out_of_scope']} out of "
            f"scope, {counts['n_unreadable']} unreadable, of {counts['n_files']} file(s)); a drift check needs at "
            f"least {MIN_IMAGES} in-scope images: add more of this site's films")
    drift, why = batch_drift(predictor, results)
    if drift is None:
        raise _click_errors.ClickException(why)
    console.print(drift_message(drift), style="bold yellow" if drift.shifted else None, highlight=False,
                  soft_wrap=True)
    console.print(f"components (each MMD over its 95th percentile under no shift; the statistic is the larger): "
                  f"features {drift.features_component:.2f}, intensity {drift.intensity_component:.2f}; threshold "
                  f"{drift.threshold:.2f} calls at most {drift.alpha:.0%} of in-distribution batches of "
                  f"{drift.n_used} shifted", highlight=False, soft_wrap=True)
    reasons = Counter(r.scope_reason for r in results if r.probability is not None and r.in_scope is False)
    console.print(f"{counts['n_in_scope']} in-scope image(s) of {counts['n_files']} file(s); "
                  f"{counts['n_out_of_scope']} not assessed (out of scope); {counts['n_unreadable']} unreadable",
                  highlight=False)
    if json_out is not None:
        doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": predictor.model_name,
               "model_file": predictor.path, "model_version": predictor.version, "adult_age_years": adult_age,
               **drift.to_dict(), "message": drift_message(drift), **counts,
               "out_of_scope_reasons": dict(reasons.most_common()), "paths": [str(p) for p in paths]}
        atomic_write_text(json_out, json.dumps(doc, indent=2) + "\n")
        console.print(f"wrote {json_out}", highlight=False)
