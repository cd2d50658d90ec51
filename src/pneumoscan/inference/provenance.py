"""Where a model was adapted or calibrated at a site, in words, from its metadata alone (no torch, no model).

:func:`site_state`, :func:`provenance` and :func:`provenance_line` read the ``adaptation`` record written by
``pneumoscan adapt`` (:func:`pneumoscan.onboarding.site.adapt`) and the ``site_calibration`` record written by
``pneumoscan calibrate``. They live here, apart from :mod:`pneumoscan.onboarding.site` (which imports torch for AdaBN), so
that ``pneumoscan predict`` and the server can say where a model comes from without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["calibration_details", "calibration_words", "provenance", "provenance_line", "site_state"]


def site_state(meta: Mapping[str, Any]) -> str:
    """``"shipped"``, ``"adapted"``, ``"calibrated"`` or ``"adapted and calibrated"`` (prefixed ``"fine-tuned"`` /
    ``"fine-tuned, then "`` after ``train --init-from``), from a model's metadata
    (``adaptation`` written by :func:`pneumoscan.onboarding.site.adapt`, ``site_calibration`` by ``pneumoscan calibrate``)."""
    adapted, calibrated = bool(meta.get("adaptation")), bool(meta.get("site_calibration"))
    if adapted and calibrated:
        state = "adapted and calibrated"
    else:
        state = "adapted" if adapted else "calibrated" if calibrated else "shipped"
    if meta.get("fine_tuning"):  # written by `pneumoscan train --init-from` (pneumoscan.training.finetune)
        return "fine-tuned" if state == "shipped" else f"fine-tuned, then {state}"
    return state


def provenance(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``{"site_state", "adaptation", "site_calibration", "provenance", "score_calibration",
    "score_calibration_details"}``: the state, both records (None when absent), :func:`provenance_line` (``""`` for a
    model as shipped) and where its score was calibrated (:func:`calibration_words`, :func:`calibration_details`)."""
    return {"site_state": site_state(meta), "adaptation": meta.get("adaptation") or None,
            "site_calibration": meta.get("site_calibration") or None, "provenance": provenance_line(meta),
            "score_calibration": calibration_words(meta), "score_calibration_details": calibration_details(meta)}


def calibration_words(meta: Mapping[str, Any]) -> str:
    """Where this model's score was calibrated, in a few words shown beside every score: "calibrated on the training
    hospital's validation films" for a model as trained, "recalibrated at this site on 120 films" after
    ``pneumoscan calibrate`` fitted the temperature on a site's films; an adapted model whose scale was not refitted
    says so ("..., before adaptation at this site")."""
    site = meta.get("site_calibration") or {}
    if site and site.get("temperature_source") == "site":
        return f"recalibrated at this site on {site.get('n_images', '?')} films"
    cal = meta.get("calibration") or {}
    if cal and str(cal.get("method") or "") == "none":
        words = "not calibrated (the network's own scale)"
    else:
        words = "calibrated on the training hospital's validation films"
    if site:
        words += f"; threshold set at this site on {site.get('n_images', '?')} films"
    elif meta.get("adaptation"):
        words += ", before adaptation at this site"
    return words


def calibration_details(meta: Mapping[str, Any]) -> str:
    """One sentence on what the score's scale rests on: the films, their case mix and the temperature, and what the
    score means at a site with fewer pneumonias (empty when the model records no calibration)."""
    cal = meta.get("calibration") or {}
    site = meta.get("site_calibration") or {}
    if site and site.get("temperature_source") == "site":
        n, n_pos = site.get("n_images"), site.get("n_pneumonia")
        mix = f", {100 * n_pos / n:.0f}% pneumonia" if isinstance(n, int) and isinstance(n_pos, int) and n else ""
        return (f"Temperature {float(site.get('temperature', 1.0)):.2f} fitted on {n} films of this site{mix} "
                f"({_day(site.get('date'))}). The score is a probability for films like those, at that case mix.")
    if not cal:
        return ""
    t = float(cal.get("temperature", 1.0))
    n, n_pos = cal.get("n_images"), cal.get("n_pneumonia")
    if not isinstance(n, int):
        n = (meta.get("operating_point") or {}).get("n_val_images")
    mix = f", {100 * n_pos / n:.0f}% pneumonia" if isinstance(n, int) and isinstance(n_pos, int) and n else ""
    films = f"{n} validation films of the training hospital{mix}" if n else "the training hospital's validation films"
    fitted = cal.get("fitted_by_likelihood")
    floor = cal.get("min_temperature")
    how = f"temperature {t:.2f}"
    if isinstance(fitted, (int, float)) and isinstance(floor, (int, float)) and fitted < floor:
        how += f" (the fit gave {fitted:.2f}, which would sharpen the scores; the floor {floor:g} is used)"
    return (f"Score scale set on {films}: {how}. At a site with fewer pneumonias the same score means a lower "
            "probability; 'pneumoscan calibrate' refits it on the site's own labelled films.")


def provenance_line(meta: Mapping[str, Any]) -> str:
    """One sentence for people on where this model was adapted or calibrated; ``""`` for a model as shipped.

    E.g. ``"Model adapted at this site on 2026-11-26 from 312 films (parent e4d5bf9a2f72)"``.
    """
    parts = []
    ft = meta.get("fine_tuning") or {}
    if ft:
        parent = str(ft.get("parent_model_sha256") or "")[:12]
        parts.append(f"Model fine-tuned at this site on {_day(ft.get('date'))} on {ft.get('n_images', '?')} labelled "
                     "films" + (f" (parent {parent})" if parent else ""))
    ad = meta.get("adaptation") or {}
    if ad:
        parent = str(ad.get("parent_model_sha256") or "")[:12]
        parts.append(f"Model adapted at this site on {_day(ad.get('date'))} from {ad.get('n_images', '?')} films"
                     + (f" (parent {parent})" if parent else ""))
    cal = meta.get("site_calibration") or {}
    if cal:
        n = next((cal[k] for k in ("n_images", "n_films", "n_labelled", "n") if cal.get(k) is not None), None)
        when = cal.get("date") or cal.get("created")
        text = "threshold calibrated at this site" + (f" on {_day(when)}" if when else "")
        text += f" on {n} labelled films" if n is not None else ""
        threshold = (cal.get("threshold") if cal.get("threshold") is not None
                     else (meta.get("operating_point") or {}).get("threshold"))
        if isinstance(threshold, (int, float)):
            text += f" (threshold {float(threshold):.3f})"
        parts.append(text[0].upper() + text[1:] if not parts else text)
    return "; ".join(parts)


def _day(stamp: Any) -> str:
    return str(stamp)[:10] if stamp else "an unknown date"
