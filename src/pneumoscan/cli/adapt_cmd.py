"""``pneumoscan adapt``: adapt a model to a site from its unlabelled films (registered on the app by the package).

The method (AdaBN, EM prevalence, the site reference) is :mod:`pneumoscan.onboarding.site`'s; this command finds the files,
makes the one library call and reports what it did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import ADULT_AGE_DEFAULT, check_adult_age, console, writable_folder
from pneumoscan.cli.common import click_errors as _click_errors

#: :data:`pneumoscan.onboarding.site.MIN_SITE_IMAGES`, repeated so that ``--help`` does not load torch (a test keeps them equal).
MIN_SITE_IMAGES_DEFAULT = 100


def adapt_cmd(
    data: Annotated[list[Path], typer.Option("--data", "-d", metavar="FOLDER", help="A folder of this site's films (JPEG, PNG, DICOM), flat or (with --recursive) in sub-folders; class folders are not needed and any labels are ignored. Repeat for several folders.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The adapted checkpoint to write (.safetensors, a new file: an existing one is never replaced).", show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="The .safetensors checkpoint to adapt. Default: $PNEUMOSCAN_MODEL, else the packaged model.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also scan sub-folders.")] = False,
    min_images: Annotated[int, typer.Option("--min-images", min=MIN_SITE_IMAGES_DEFAULT, help="Refuse fewer in-scope films than this (at least 100).")] = MIN_SITE_IMAGES_DEFAULT,
    adult_age: Annotated[float, typer.Option("--adult-age", metavar="YEARS", help="A DICOM PatientAge at or above this many years puts the film out of scope (not used).")] = ADULT_AGE_DEFAULT,
    seed: Annotated[int, typer.Option(help="Seed of the split of the films into the site reference's two halves.")] = 0,
    batch_size: Annotated[int, typer.Option(min=2, help="Films per forward pass (and per BatchNorm batch).")] = 32,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for the model (default: all cores).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Adapt a model to this site from its unlabelled films, into a new checkpoint (site onboarding, step 2).

    Needs at least 100 in-scope films of the site, ideally consecutive and unselected (200 or more also give
    the adapted model a drift check). No labels: class sub-folders are not needed. Each film passes the model's
    scope gate first; only in-scope films are used, duplicates count once. Films the model was trained on are
    refused (recognised by their decoded pixels, whatever their names); films of its validation set give a
    warning. A model without BatchNorm (seed-cnn) is refused.

    What it does: re-estimates every BatchNorm layer's mean and variance on the site's films (AdaBN, Li et al.
    2016); the weights, the operating threshold and the temperature stay as they were. It estimates the share
    of pneumonia among the films (EM, Saerens et al. 2002) and reports it; no decision depends on it. The new
    model's scope gate and drift check compare with these commissioning films (a seeded half each), no longer
    with the training films. The new checkpoint records the number of films, a hash of the film set, the date
    and the parent model's SHA-256; predict, serve and the web page show it.

    Adaptation moves the scores, also where the films did not shift (on the shipped model it lowered them), while
    the threshold stays the one chosen for the unadapted model. Next, therefore: calibrate the threshold on
    labelled films of this site (pneumoscan calibrate), then evaluate on a separate labelled set. Exit code 0 when the checkpoint was written, 1 when it was refused (the message says
    why), 2 on a bad invocation.
    """
    from pneumoscan.inference.predictor import default_model_path
    from pneumoscan.onboarding.site import adapt, provenance_line
    from pneumoscan.worklist import collect

    check_adult_age(adult_age)
    if out.suffix.lower() != ".safetensors":
        raise typer.BadParameter(f"must end in .safetensors, got {out.name!r}", param_hint="--out")
    if out.exists():
        raise typer.BadParameter(f"{out} already exists; adapt writes a new checkpoint and never replaces one",
                                 param_hint="--out")
    writable_folder(out.parent, "--out")
    model_path = model if model is not None else default_model_path()
    collected = collect(data, recursive=recursive)
    if not collected.files:
        hint = "" if recursive else " (use --recursive to search sub-folders)"
        raise _click_errors.UsageError(f"no image files found in {', '.join(map(str, data))}{hint}")
    result = adapt(model_path, collected.files, out, min_images=min_images, adult_age_years=adult_age,
                   batch_size=batch_size, seed=seed, threads=threads, progress=progress)
    a = result.adaptation
    console.print(f"{provenance_line({'adaptation': a})} -> {result.out}", highlight=False, soft_wrap=True)
    console.print(f"used {a['n_images']} in-scope film(s) of {a['n_files']} file(s): {a['n_out_of_scope']} out of "
                  f"scope, {a['n_unreadable']} unreadable, {a['n_duplicates']} duplicate(s)", highlight=False, soft_wrap=True)
    console.print(f"BatchNorm statistics re-estimated in {a['n_batchnorm_layers']} layer(s) (AdaBN); weights, "
                  f"threshold {a['threshold']:.3f} and temperature {a['temperature']:.3f} unchanged", highlight=False,
                  soft_wrap=True)
    start = (f"training prevalence {a['training_prevalence']:.1%}" if a["training_prevalence"] is not None
             else "no training prevalence recorded, started from 50%")
    console.print(f"estimated pneumonia prevalence among these films (EM): {a['prevalence_em']:.1%} (the unadapted "
                  f"model's scores give {a['prevalence_em_parent']:.1%}; {start}); reported only, no decision changes",
                  highlight=False, soft_wrap=True)
    console.print(f"share flagged at the threshold: {a['flag_rate_before']:.1%} before, {a['flag_rate_after']:.1%} "
                  "after adaptation (not a sensitivity or specificity: these films carry no labels)",
                  highlight=False, soft_wrap=True)
    ref = a["reference"]
    drift = ("drift check available" if ref["drift_available"] else
             f"NO drift check (it needs {ref['drift_needs_val']} films in that half: adapt on "
             f"{2 * ref['drift_needs_val']} or more in-scope films to have one)")
    console.print(f"scope gate and drift now compare with this site's films: {ref['n_bank']} form the reference, "
                  f"{ref['n_val']} set its cut-off; {drift}", highlight=False, soft_wrap=True)
    for w in result.warnings:
        console.print(f"warning: {w}", style="bold yellow", highlight=False, soft_wrap=True)
    skipped = collected.summary()
    if skipped:
        console.print(f"{skipped}; -v lists them", highlight=False)
    console.print("next: calibrate the threshold on labelled films of this site (pneumoscan calibrate --model "
                  f"{result.out} ...), then evaluate on a separate labelled set", highlight=False, soft_wrap=True)
