"""``pneumoscan drift``: does a batch of a site's images still look like the training data to the model?

Registered on the app by the package. The statistic and its threshold are :mod:`pneumoscan.gate.drift`'s; this command
prints what :func:`pneumoscan.worklist.job.drift_job` finds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import ADULT_AGE_DEFAULT, console, usage_errors


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
    standard deviation (exposure, contrast). A site's mix of cases is not a shift: the training films are
    reweighted, class by class, to the share of pneumonia that fits the batch best (printed), and the threshold
    is set by resampling batches of the same size, at that mix, from the model's held-out validation films, so
    that a batch like the training data is called shifted at most 5% of the time whatever its share of
    pneumonia (a model whose reference carries no labels cannot allow for the mix, and says so). Large batches
    are subsampled (seeded) to at most 500 images.

    A shifted batch means the model's results on these images may not hold: first adapt the model to this
    site's films, which needs no labels (pneumoscan adapt), then calibrate it on labelled films of this site
    (pneumoscan calibrate). Exit code 0 when the check ran (shifted or not), 1 when it cannot run (fewer than
    50 in-scope images, a model without a reference, a bad model file), 2 on a bad invocation.
    """
    from pneumoscan.worklist.job import drift_job

    with usage_errors():
        report = drift_job(paths, model=model, recursive=recursive, threads=threads, batch_size=batch_size,
                           progress=progress, adult_age=adult_age, json_out=json_out)
    drift = report.drift
    console.print(report.message, style="bold yellow" if drift.shifted else None, highlight=False, soft_wrap=True)
    console.print(f"components (each MMD over its 95th percentile under no shift; the statistic is the larger): "
                  f"features {drift.features_component:.2f}, intensity {drift.intensity_component:.2f}; threshold "
                  f"{drift.threshold:.2f} calls at most {drift.alpha:.0%} of in-distribution batches of "
                  f"{drift.n_used} shifted", highlight=False, soft_wrap=True)
    if drift.estimated_mix is not None:
        console.print(f"the training films were reweighted to {drift.estimated_mix:.0%} pneumonia, the mix of cases "
                      "that fits this batch best, so the mix alone does not count as a shift", highlight=False,
                      soft_wrap=True)
    else:
        console.print("not adjusted for the mix of cases: this model's reference carries no labels (rebuild it with "
                      "scripts/build_reference.py --labels-only)", highlight=False, soft_wrap=True)
    c = report.counts
    console.print(f"{c['n_in_scope']} in-scope image(s) of {c['n_files']} file(s); {c['n_out_of_scope']} not assessed "
                  f"(out of scope); {c['n_unreadable']} unreadable", highlight=False)
    if json_out is not None:
        console.print(f"wrote {json_out}", highlight=False)
