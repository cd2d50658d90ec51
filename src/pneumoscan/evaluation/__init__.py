"""Evaluation: metrics with patient-bootstrap intervals on labelled images (:mod:`.evaluate`) and the
self-contained HTML report (:mod:`.report`)."""

from __future__ import annotations

from pneumoscan.evaluation.evaluate import evaluate

__all__ = ["evaluate"]
