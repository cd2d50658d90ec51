"""THE result: one immutable record per scored (or refused, or unreadable) input, the only thing any output reads.

Scoring makes a :class:`Result` once (:mod:`pneumoscan.inference`); the worklist rows and their ranking, the CSV and
JSON files, the store, the REST API and the page, the DICOM SR and Secondary Capture, the DICOM node, the evaluation
report's gallery and site onboarding all read it, and none decides again: the decision is computed here, in
:meth:`Result.__post_init__`, from the probability, the model's operating threshold and the scope gate's verdict
(:func:`pneumoscan.metrics.decide`, the one rule), and cannot disagree with them.

The vocabulary is one everywhere (Python, CSV, JSON, the store, the page): the fields below, the DICOM context under
:data:`CONTEXT_KEYS` (:class:`pneumoscan.io.ImageContext`'s own names), and :meth:`Result.caption`, the one wording of a
result for captions (the Secondary Capture, heatmap overlays, the page's overlay). Decision support, not a
diagnosis.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pneumoscan.constants import CAUSE_WORDS, CLASS_NAMES, DISCLAIMER_SHORT, NOT_READ_WORDS, OUT_OF_SCOPE
from pneumoscan.io import ImageContext
from pneumoscan.metrics import decide, decision_words, score_100

__all__ = ["CAUSES", "CONTEXT_KEYS", "DECISIONS", "RESULT_KEYS", "Explanation", "ModelIdentity", "Result", "upsample_map"]

#: The causes a flagged film can get (``cause``; ``""`` for every other film), in the cause output's order.
CAUSES = ("BACTERIAL", "VIRAL")
#: The machine decisions a read film can get; ``""`` is the decision of a file that could not be read.
DECISIONS = (CLASS_NAMES[1], CLASS_NAMES[0], OUT_OF_SCOPE)
#: The DICOM context every output carries, by these names (never the patient's name).
CONTEXT_KEYS = ImageContext.OUTPUT_KEYS


@dataclass(frozen=True)
class ModelIdentity:
    """Which model answered, and at which operating point: enough to reproduce and audit a decision.

    ``name`` (registry name, e.g. ``efficientnet-lite0``), ``version`` (12 hex digits of the model file's SHA-256, or
    ``"in-memory"``), ``threshold`` (the operating threshold on the calibrated probability, in [0, 1]),
    ``cause_threshold`` (the cause output's, on P(viral); None without one), ``calibration`` (where the score was
    calibrated, in words shown beside it: :func:`pneumoscan.inference.provenance.calibration_words`; ``""`` when
    unknown).
    """

    name: str
    version: str
    threshold: float
    #: The cause output's operating threshold on P(viral); None for a model without a cause output.
    cause_threshold: float | None = None
    #: Where the score was calibrated, in words ("calibrated on the training hospital's validation films").
    calibration: str = ""

    def __post_init__(self) -> None:
        for name in ("threshold", "cause_threshold"):
            value = getattr(self, name)
            if name == "cause_threshold" and value is None:
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def upsample_map(low: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a ``(h, w)`` map to ``size = (H, W)`` with pixel-centre alignment (what
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` computes), negatives clipped, scaled
    to [0, 1] by its maximum. Returns float32 ``(H, W)``; all zeros when the map has no positive value."""
    a = np.asarray(low, dtype=np.float32)
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"a map must be (h, w), got shape {a.shape}")
    out_h, out_w = int(size[0]), int(size[1])

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, None)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(a.shape[0], out_h)
    x0, x1, wx = axis(a.shape[1], out_w)
    rows = a[y0] * (1 - wy)[:, None] + a[y1] * wy[:, None]
    up = rows[:, x0] * (1 - wx)[None, :] + rows[:, x1] * wx[None, :]
    np.clip(up, 0.0, None, out=up)
    peak = float(up.max()) if up.size else 0.0
    if not (peak > 1e-12 and math.isfinite(peak)):
        return np.zeros((out_h, out_w), dtype=np.float32)
    return (up / peak).astype(np.float32)


@dataclass(frozen=True)
class Explanation:
    """Where the model found evidence for pneumonia in one film: ``cam``, the method's map on its own grid
    (float32 ``(h, w)``, non-negative, unnormalised; ``(10, 10)`` for occlusion sensitivity,
    :mod:`pneumoscan.inference.occlusion`).
    :meth:`heatmap` stretches it over the film (the model saw the whole film squeezed to a square, so the square
    map stretched back lies on the film's geometry). A map of all zeros means "no positive evidence"."""

    cam: np.ndarray = field(repr=False)
    method: str = "occlusion"

    def heatmap(self, size: tuple[int, ...]) -> np.ndarray:
        """The map at ``size`` (``(H, W)``, e.g. the film's shape), float32 in [0, 1]."""
        return upsample_map(self.cam, (int(size[0]), int(size[1])))


@dataclass(frozen=True)
class Result:
    """One input's outcome. Make it with :meth:`scored` or :meth:`unread`; ``decision`` is computed, never given.

    Attributes:
        source: the input as its caller named it (a path, an upload's name, ``"sop <12 hex>"`` for the DICOM node).
        model: the :class:`ModelIdentity` that answered (its operating threshold decides).
        probability: calibrated probability of pneumonia in [0, 1]; None when the file could not be read. Out of
            scope it is kept for audit only and is never a risk.
        in_scope: the scope gate's verdict (None when not read); ``scope_reason`` says why not, in a clinician's
            words; ``scope_evidence`` which check refused (``metadata``, ``pixels``, ``features``); ``ood_score`` the
            feature distance to the training films when computed. ``scope_caution`` (in scope only): non-empty
            (:data:`~pneumoscan.constants.UNFAMILIAR_CAUTION`) when the film is a chest radiograph unlike the training
            films: it is scored, and the score is read with caution.
        context: the image's DICOM context (:class:`~pneumoscan.io.ImageContext`; empty fields for other formats).
        error: why the file could not be read (then ``probability`` is None); ``""`` otherwise.
        note: a problem with an output of a scored file (its heatmap or DICOM results could not be written); the
            score stands.
        heatmap_path: the overlay PNG written for it (``predict --heatmaps``); ``""`` when it could not be written;
            None when none was asked for.
        explanation: the :class:`Explanation` when one was computed (None otherwise).
        film: the decoded film at display size (``(H, W) uint8``, at most the size a Secondary Capture or a preview
            needs) when the caller asked to keep it, so outputs never decode the file again; None otherwise.
        features, descriptor: the pooled features ``(C,)`` and intensity descriptors ``(7,)`` of the model's input,
            for the drift check (in no output file).
        cause_probability: the cause output's calibrated P(viral) for a model that has one (None otherwise); kept for
            every scored film, shown only for one that has a ``cause``.
        decision: ``"PNEUMONIA"`` (flagged), ``"NORMAL"``, ``"OUT_OF_SCOPE"`` or ``""`` (not read); computed.
        cause: ``"BACTERIAL"`` or ``"VIRAL"`` for a flagged, in-scope film of a model with a cause output (P(viral)
            at or above the model's ``cause_threshold``: viral); ``""`` for every other film; computed.
    """

    source: str
    model: ModelIdentity
    probability: float | None = None
    in_scope: bool | None = None
    scope_reason: str = ""
    scope_evidence: str = ""
    scope_caution: str = ""
    ood_score: float | None = None
    context: ImageContext = field(default_factory=ImageContext)
    error: str = ""
    note: str = ""
    heatmap_path: str | None = None
    cause_probability: float | None = None
    explanation: Explanation | None = field(default=None, repr=False, compare=False)
    film: np.ndarray | None = field(default=None, repr=False, compare=False)
    features: np.ndarray | None = field(default=None, repr=False, compare=False)
    descriptor: np.ndarray | None = field(default=None, repr=False, compare=False)
    decision: str = field(init=False, default="")
    cause: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.context is None:  # "no DICOM context" is the empty context, never None
            object.__setattr__(self, "context", ImageContext())
        p = self.probability
        if p is None:
            if not self.error:
                raise ValueError(f"{self.source}: a result without a probability needs the error that explains why")
            if self.in_scope is not None:
                raise ValueError(f"{self.source}: a file that was not read has no scope verdict")
            return
        if not (isinstance(p, (int, float, np.floating)) and math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"{self.source}: probability must be a number in [0, 1], got {p!r}")
        if self.error:
            raise ValueError(f"{self.source}: a scored result has no error (its output problems are its note)")
        in_scope = self.in_scope is not False
        if self.scope_caution and not in_scope:
            raise ValueError(f"{self.source}: only a film that is scored in scope carries a caution")
        object.__setattr__(self, "probability", float(p))
        object.__setattr__(self, "in_scope", in_scope)
        label = CLASS_NAMES[int(decide(float(p), self.model.threshold))] if in_scope else OUT_OF_SCOPE
        object.__setattr__(self, "decision", label)
        c = self.cause_probability
        if c is not None:
            if not (isinstance(c, (int, float, np.floating)) and math.isfinite(c) and 0.0 <= c <= 1.0):
                raise ValueError(f"{self.source}: cause_probability must be a number in [0, 1], got {c!r}")
            object.__setattr__(self, "cause_probability", float(c))
            # Only a flagged, in-scope film gets a cause: the question "what kind?" follows "is it pneumonia?".
            if label == CLASS_NAMES[1] and self.model.cause_threshold is not None:
                object.__setattr__(self, "cause", CAUSES[int(decide(float(c), self.model.cause_threshold))])

    # ------------------------------------------------------------------ construction

    @classmethod
    def scored(cls, source: str, probability: float, model: ModelIdentity, *, in_scope: bool = True,
               scope_reason: str = "", **kwargs: Any) -> Result:
        """A film that was read and scored (``in_scope`` False: refused by the gate, ``scope_reason`` says why)."""
        return cls(source=str(source), model=model, probability=probability, in_scope=in_scope,
                   scope_reason="" if in_scope else (scope_reason or "outside the intended use"), **kwargs)

    @classmethod
    def unread(cls, source: str, error: str, model: ModelIdentity, *,
               context: ImageContext | None = None) -> Result:
        """A file that could not be read: ``error`` says why, in words that name the problem."""
        return cls(source=str(source), model=model, error=str(error) or "the file could not be read",
                   context=context or ImageContext())

    def replace(self, **changes: Any) -> Result:
        """A copy with ``changes`` (the decision is computed again from the new fields)."""
        return dataclasses.replace(self, **changes)

    def without_film(self) -> Result:
        """This result without its kept film (what a long list keeps in memory once the film's outputs are made)."""
        return self if self.film is None else self.replace(film=None)

    # ------------------------------------------------------------------ reading

    @property
    def read(self) -> bool:
        """True when the file was decoded and scored (in scope or not)."""
        return self.probability is not None

    @property
    def assessed(self) -> bool:
        """True when the film was scored in scope: its probability is a risk."""
        return self.probability is not None and self.in_scope is True

    @property
    def positive(self) -> bool:
        """Flagged: possible pneumonia (in scope and at or above the threshold)."""
        return self.decision == CLASS_NAMES[1]

    @property
    def threshold(self) -> float:
        return self.model.threshold

    @property
    def score(self) -> float | None:
        """The score people see, 0-100 with one decimal (None when not assessed: no risk to show)."""
        return score_100(self.probability) if self.assessed and self.probability is not None else None

    @property
    def score_threshold(self) -> float:
        return score_100(self.model.threshold)

    @property
    def decision_text(self) -> str:
        """The decision in the one wording (:data:`pneumoscan.constants.DECISION_WORDS`)."""
        return decision_words(self.decision)

    @property
    def cause_text(self) -> str:
        """The cause in the one wording (:data:`pneumoscan.constants.CAUSE_WORDS`); ``""`` without one."""
        return CAUSE_WORDS.get(self.cause, "")

    @property
    def cause_score(self) -> float | None:
        """The viral score people see (P(viral) on 0-100), only for a film that has a cause."""
        return score_100(self.cause_probability) if self.cause and self.cause_probability is not None else None

    @property
    def cause_score_threshold(self) -> float | None:
        return None if self.model.cause_threshold is None else score_100(self.model.cause_threshold)

    @property
    def label(self) -> str:
        """The machine decision (``decision``)."""
        return self.decision

    def caption(self) -> str:
        """The one wording of this result for a caption (Secondary Capture, heatmap overlays, the page's overlay):
        ``"Flagged: possible pneumonia. Score 73.4 / 100 (threshold 44.2; calibrated on the training hospital's
        validation films). Decision support, not a diagnosis."`` (the model's :attr:`ModelIdentity.calibration`);
        not assessed ``"Not assessed (out of scope): <reason>. Decision support, not a diagnosis."`` (no score: it is
        not a risk); not read ``"Could not be read: <error>"``. A film scored with a :attr:`scope_caution` carries
        it after its score."""
        if not self.read:
            return f"{NOT_READ_WORDS}: {self.error}"
        if not self.assessed:
            return f"{self.decision_text}: {self.scope_reason}. {DISCLAIMER_SHORT}"
        cause = (f" {self.cause_text[:1].upper()}{self.cause_text[1:]} (viral score {self.cause_score:.1f} / 100, "
                 f"threshold {self.cause_score_threshold:.1f})." if self.cause else "")
        where = f"; {self.model.calibration}" if self.model.calibration else ""
        caution = f" {self.scope_caution}." if self.scope_caution else ""
        return (f"{self.decision_text}. Score {self.score:.1f} / 100 (threshold {self.score_threshold:.1f}{where})."
                f"{cause}{caution} {DISCLAIMER_SHORT}")

    def context_dict(self) -> dict[str, str]:
        """The DICOM context by :data:`CONTEXT_KEYS` (never the patient's name)."""
        return self.context.to_dict()

    def heatmap(self, size: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The explanation's map at ``size`` (default: the kept film's size), or None without one; always None for a
        film that was not assessed (out of scope: a map of "evidence" on it would read as a finding)."""
        if self.explanation is None or not self.assessed:
            return None
        if size is None:
            if self.film is None:
                raise ValueError("give the size: this result keeps no film")
            size = self.film.shape
        return self.explanation.heatmap(size)

    def to_dict(self) -> dict[str, Any]:
        """The result as the REST API and the JSON files give it (JSON-safe; the stored worklist's rows have the same
        keys): :data:`RESULT_KEYS`. ``score`` is None when not assessed; ``context`` holds :data:`CONTEXT_KEYS`. The
        input's name is the caller's to add (``filename`` for an upload, ``path`` in a worklist)."""
        return {"ok": self.read, "probability": self.probability, "score": self.score,
                "threshold": self.model.threshold, "score_threshold": self.score_threshold,
                "decision": self.decision, "decision_text": self.decision_text,
                "positive": self.positive if self.read else None, "in_scope": self.in_scope,
                "scope_reason": self.scope_reason, "scope_caution": self.scope_caution,
                "cause": self.cause, "cause_text": self.cause_text,
                "cause_score": self.cause_score,
                "cause_probability": self.cause_probability if self.cause else None,
                "cause_threshold": self.model.cause_threshold, "score_calibration": self.model.calibration,
                "error": self.error, "note": self.note,
                "model_name": self.model.name, "model_version": self.model.version, "context": self.context_dict()}


#: The keys of :meth:`Result.to_dict`, in order: what every JSON result (the API's, the stored worklist's) holds.
RESULT_KEYS = ("ok", "probability", "score", "threshold", "score_threshold", "decision", "decision_text", "positive",
               "in_scope", "scope_reason", "scope_caution", "cause", "cause_text", "cause_score", "cause_probability",
               "cause_threshold", "score_calibration", "error", "note", "model_name", "model_version", "context")
