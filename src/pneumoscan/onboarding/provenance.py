"""Where a model was adapted or calibrated at a site, in words, from its metadata alone (no torch, no model).

:func:`site_state`, :func:`provenance` and :func:`provenance_line` read the ``adaptation`` record written by
``pneumoscan adapt`` (:func:`pneumoscan.onboarding.site.adapt`) and the ``site_calibration`` record written by
``pneumoscan calibrate``. They live here, apart from :mod:`pneumoscan.onboarding.site` (which imports torch for AdaBN), so
that ``pneumoscan predict`` and the server can say where a model comes from without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["provenance", "provenance_line", "site_state"]


def site_state(meta: Mapping[str, Any]) -> str:
    """``"shipped"``, ``"adapted"``, ``"calibrated"`` or ``"adapted and calibrated"``, from a model's metadata
    (``adaptation`` written by :func:`pneumoscan.onboarding.site.adapt`, ``site_calibration`` by ``pneumoscan calibrate``)."""
    adapted, calibrated = bool(meta.get("adaptation")), bool(meta.get("site_calibration"))
    if adapted and calibrated:
        return "adapted and calibrated"
    return "adapted" if adapted else "calibrated" if calibrated else "shipped"


def provenance(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``{"site_state", "adaptation", "site_calibration", "provenance"}``: the state, both records (None when
    absent) and :func:`provenance_line` (``""`` for a model as shipped)."""
    return {"site_state": site_state(meta), "adaptation": meta.get("adaptation") or None,
            "site_calibration": meta.get("site_calibration") or None, "provenance": provenance_line(meta)}


def provenance_line(meta: Mapping[str, Any]) -> str:
    """One sentence for people on where this model was adapted or calibrated; ``""`` for a model as shipped.

    E.g. ``"Model adapted at this site on 2026-11-26 from 312 films (parent e4d5bf9a2f72)"``.
    """
    parts = []
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
