"""Site onboarding commands (registered on the app by the package): ``pneumoscan adapt`` (unlabelled films) and
``pneumoscan calibrate`` (labelled films).

The methods are :mod:`pneumoscan.onboarding.site`'s (class-balanced AdaBN, the checked prevalence, the site reference)
and :mod:`pneumoscan.onboarding.operating_point`'s (the site rule, :mod:`pneumoscan.onboarding.site_threshold`); each
command finds the files, makes the one library call and reports what it did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pneumoscan.cli.common import ADULT_AGE_DEFAULT, check_adult_age, console, needs_torch, writable_folder
from pneumoscan.cli.common import click_errors as _click_errors
from pneumoscan.constants import DEFAULT_CACHE_DIR

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
    balance: Annotated[bool, typer.Option(help="Weigh the films so that the re-estimated statistics have the training mix of pneumonia and normal films (class-balanced AdaBN); --no-balance: plain AdaBN, which follows this site's case mix.")] = True,
) -> None:
    """Adapt a model to this site from its unlabelled films, into a new checkpoint (site onboarding, step 2).

    Needs at least 100 in-scope films of the site, ideally consecutive and unselected (200 or more also give
    the adapted model a drift check). No labels: class sub-folders are not needed. Each film passes the model's
    scope gate first; only in-scope films are used, duplicates count once. Films the model was trained on are
    refused (recognised by their decoded pixels, whatever their names); films of its validation set give a
    warning. A model without BatchNorm (seed-cnn) is refused.

    What it does: estimates the share of pneumonia among the films (EM, Saerens et al. 2002) and checks the
    estimate (against BBSE and by a bootstrap interval; a warning says when it is unreliable); re-estimates every
    BatchNorm layer's mean and variance on the site's films (AdaBN, Li et al. 2016), each film weighted so that
    the weighted films have the training mix of classes, so that the statistics follow the acquisition and not the
    case mix; the weights, the operating threshold and the temperature stay as they were. No decision depends on
    the estimate of the mix. The new
    model's scope gate and drift check compare with these commissioning films (a seeded half each), no longer
    with the training films. The new checkpoint records the number of films, a hash of the film set, the date
    and the parent model's SHA-256; predict, serve and the web page show it.

    Adaptation moves the scores, also where the films did not shift (on the shipped model it lowered them), while
    the threshold stays the one chosen for the unadapted model. Next, therefore: calibrate the threshold on
    labelled films of this site (pneumoscan calibrate), then evaluate on a separate labelled set. Exit code 0 when the checkpoint was written, 1 when it was refused (the message says
    why), 2 on a bad invocation.
    """
    from pneumoscan.inference.predictor import default_model_path
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
    with needs_torch("pneumoscan adapt"):  # AdaBN re-estimates the BatchNorm statistics in torch
        from pneumoscan.onboarding.site import adapt, provenance_line

        result = adapt(model_path, collected.files, out, min_images=min_images, adult_age_years=adult_age,
                       batch_size=batch_size, seed=seed, threads=threads, progress=progress, balance=balance)
    a = result.adaptation
    console.print(f"{provenance_line({'adaptation': a})} -> {result.out}", highlight=False, soft_wrap=True)
    console.print(f"used {a['n_images']} in-scope film(s) of {a['n_files']} file(s): {a['n_out_of_scope']} out of "
                  f"scope, {a['n_unreadable']} unreadable, {a['n_duplicates']} duplicate(s)", highlight=False, soft_wrap=True)
    how = "class-balanced AdaBN: films weighted to the training mix" if a["balanced"] else "AdaBN, unweighted"
    console.print(f"BatchNorm statistics re-estimated in {a['n_batchnorm_layers']} layer(s) ({how}); weights, "
                  f"threshold {a['threshold']:.3f} and temperature {a['temperature']:.3f} unchanged", highlight=False,
                  soft_wrap=True)
    start = (f"training prevalence {a['training_prevalence']:.1%}" if a["training_prevalence"] is not None
             else "no training prevalence recorded, started from 50%")
    chk = a["prevalence_check"]
    bbse = "" if chk["bbse"] is None else f"; BBSE on the adapted model {chk['bbse']:.1%}"
    console.print(f"estimated pneumonia prevalence among these films (EM): {a['prevalence_em']:.1%} (bootstrap 95% "
                  f"interval {chk['bootstrap_ci'][0]:.1%} to {chk['bootstrap_ci'][1]:.1%}{bbse}; {start}): "
                  + ("consistent" if chk["reliable"] else "UNRELIABLE, see the warning")
                  + ("; it sets the balancing weights" if a["balanced"] else "") + "; no decision changes",
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


def calibrate_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.safetensors) to calibrate, e.g. the output of `pneumoscan adapt`.")],
    data: Annotated[Path, typer.Option(help="The site's labelled films: folder or CSV manifest; at least 50, with 15 of each class, "
                                       "none of them the model's training films.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New checkpoint to write (.safetensors; a .json copy goes beside it); never replaces a file.")],
    split: Annotated[Optional[str], typer.Option(help="Sub-folder of --data, or the manifest's 'split' value, e.g. 'val'.")] = None,
    target_sensitivity: Annotated[Optional[float], typer.Option(help="The sensitivity the threshold must keep (default: the checkpoint's, 0.95). The current threshold is kept when its sensitivity on these films is compatible with it (exact 95% interval).")] = None,
    max_false_alarm_rate: Annotated[Optional[float], typer.Option(metavar="RATE", help="A ceiling on the share of NORMAL films flagged (1 - specificity), e.g. 0.1: the threshold is raised to meet it where the target sensitivity still holds on these films; when both cannot be met, sensitivity wins and the command says so.")] = None,
    miss_cost: Annotated[Optional[float], typer.Option(help="When the threshold must move down: the lowest-cost threshold reaching the target, a missed pneumonia weighing this many false alarms (default: the highest threshold reaching the target).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the trade (the films' curve, the current and the proposed threshold, what changes) and write nothing.")] = False,
    repeats: Annotated[int, typer.Option(help="Cross-fitting repeats (choose on half the patients, measure on the other half).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the cross-fitting halves and of the temperature's folds.")] = 0,
    cache_dir: Annotated[Path, typer.Option(help="Decoded-image cache folder.")] = Path(DEFAULT_CACHE_DIR),
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Calibrate a model to a site on its labelled films (site onboarding, step 3), moving the operating point only
    as far as the films show is needed: the current threshold is kept when its sensitivity on the films is
    compatible with the target (exact interval), else it moves to the highest threshold reaching it; the
    temperature is refitted only with 50 films of each class and a likelihood gain that survives 5-fold
    cross-fitting. Shows the trade before writing (--dry-run: shows it only) and estimates by cross-fitting what
    the rule gives on new films. Writes a new checkpoint with the same weights that records all of it. Refuses the
    model's own training films (found by image content) and fewer than 50 films or 15 of a class. Do not report
    performance on these films: evaluate on a separate labelled set. Decision support, not a diagnosis."""
    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        raise typer.BadParameter(f"must be in (0, 1], got {target_sensitivity}", param_hint="--target-sensitivity")
    if max_false_alarm_rate is not None and not 0.0 <= max_false_alarm_rate < 1.0:
        raise typer.BadParameter(f"must be in [0, 1), got {max_false_alarm_rate}", param_hint="--max-false-alarm-rate")
    if miss_cost is not None and miss_cost < 0:
        raise typer.BadParameter(f"must be at least 0, got {miss_cost}", param_hint="--miss-cost")
    if repeats < 1:
        raise typer.BadParameter(f"must be at least 1, got {repeats}", param_hint="--repeats")
    if out.exists() and out.resolve() == model.resolve():
        raise typer.BadParameter(f"{out}: write the recalibrated checkpoint to a new file, not over --model",
                                 param_hint="--out")
    if out.exists() and not dry_run:
        raise typer.BadParameter(f"{out} already exists; calibrate writes a new checkpoint and never replaces one",
                                 param_hint="--out")
    with needs_torch("pneumoscan calibrate"):  # it scores the films through the decoded cache with torch
        from pneumoscan.onboarding.operating_point import rechoose_operating_point

        r = rechoose_operating_point(model, data, out, split=split, target_sensitivity=target_sensitivity,
                                     miss_cost=miss_cost, max_false_alarm_rate=max_false_alarm_rate, dry_run=dry_run,
                                     cache_dir=cache_dir, device=device, n_repeats=repeats, seed=seed)
    show_calibration(r, out)


def show_calibration(r: dict, out: Path) -> None:
    """Print what ``calibrate`` found: the films, the temperature, the trade table, the cross-fitted estimate."""
    from rich.table import Table

    for f, why in r["failures"]:
        console.print(f"[yellow]skipped[/yellow] {f}: {why}", highlight=False)
    s, b, a, tr = r["site_calibration"], r["before"] or {}, r["after"], r["trade"]
    cf = s["cross_fitted"]
    skipped = f"; {s['n_skipped']} skipped" if s["n_skipped"] else ""
    console.print(f"films: {s['n_images']} ({s['n_pneumonia']} PNEUMONIA, {s['n_normal']} NORMAL) from {s['n_patients']} "
                  f"patients{skipped}", highlight=False)
    if s["n_in_validation_set"]:
        console.print(f"[yellow]note:[/yellow] {s['n_in_validation_set']} of these films are in the model's validation "
                      "set (allowed; its epoch and stored threshold were chosen on them)", highlight=False)
    if not s["training_films_checked"]:
        console.print("[yellow]warning:[/yellow] this model carries no list of its training films: pneumoscan could not "
                      "check that none of these films trained it", highlight=False)
    t_how = "refitted on these films" if s["temperature_source"] == "site" else f"kept ({s['temperature_reason']})"
    console.print(f"temperature: {s['temperature']:.3f}, {t_how}; stored was {s['stored_temperature']:.3f}",
                  highlight=False, soft_wrap=True)
    if b.get("threshold") is not None:
        console.print(f"previous threshold: {b['threshold']:.4f} ({b.get('method', '?')}, chosen on {b.get('chosen_on', '?')})",
                      highlight=False, soft_wrap=True)
    table = Table(title=f"The trade on these {s['n_images']} films (exact 95% intervals; optimistic: the films chose it)",
                  title_justify="left")
    for col in ("threshold", "", "sensitivity", "specificity", "false alarms"):
        table.add_column(col, justify="left" if col == "" else "right")
    for row in tr["curve"]:
        table.add_row(f"{row['threshold']:.4f}", " + ".join(row["marks"]),
                      f"{row['sensitivity']:.3f} ({row['sensitivity_k']}/{row['n_pneumonia']}; "
                      f"{row['sensitivity_ci'][0]:.3f}-{row['sensitivity_ci'][1]:.3f})",
                      f"{row['specificity']:.3f} ({row['specificity_k']}/{row['n_normal']}; "
                      f"{row['specificity_ci'][0]:.3f}-{row['specificity_ci'][1]:.3f})",
                      f"{row['false_alarm_rate']:.3f}", style="bold" if row["marks"] else None)
    console.print(table)
    console.print(f"threshold: {a['threshold']:.4f}: {tr['action']}", highlight=False)
    for why in tr["reasons"]:
        console.print(f"  {why}", highlight=False, soft_wrap=True)
    cur, new = tr["current"], tr["proposed"]
    if cur is not None:
        change = ("no decision changes on these films" if (cur["sensitivity_k"], cur["specificity_k"]) ==
                  (new["sensitivity_k"], new["specificity_k"]) else
                  f"on these films: sensitivity {cur['sensitivity']:.3f} -> {new['sensitivity']:.3f}, specificity "
                  f"{cur['specificity']:.3f} -> {new['specificity']:.3f}")
        console.print(f"what changes: {change}; temperature {tr['temperature_before']:.3f} -> "
                      f"{tr['temperature_after']:.3f}", highlight=False, soft_wrap=True)
    if tr["conflict"]:
        console.print(f"[bold yellow]warning:[/bold yellow] the false-alarm ceiling {tr['max_false_alarm_rate']:g} "
                      f"cannot be met at sensitivity {tr['target_sensitivity']:g} on these films; sensitivity was "
                      "kept", highlight=False, soft_wrap=True)
    pct = f"{100 * cf['level']:g}%"
    console.print(f"expected on new films, cross-fitted ({cf['n_repeats']} repeats of: choose on half the patients, "
                  f"stratified by label, measure on the other half; seed {cf['seed']}):", highlight=False)
    for name in ("sensitivity", "specificity"):
        m = cf[name]
        console.print(f"  {name} {m['value']:.3f} ({pct} interval {m['ci'][0]:.3f} to {m['ci'][1]:.3f}: "
                      "percentiles of the repeats)", highlight=False)
    if r["written"]:
        console.print(f"site state: {'adapted and calibrated' if s['adapted'] else 'calibrated'}; wrote {out}",
                      highlight=False)
    else:
        console.print(f"dry run: nothing written (without --dry-run: {out})", highlight=False)
    console.print("Decision support, not a diagnosis. Do not report performance on these films: evaluate the new "
                  "model on a separate labelled set.", highlight=False, soft_wrap=True)
