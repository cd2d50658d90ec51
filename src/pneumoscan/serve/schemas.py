"""The REST API's responses, typed (Pydantic), so that ``/openapi.json`` documents every ``/api/v1`` route and a
hospital's integrator can generate a client. Every result, uploaded or stored, has the shape of
:meth:`pneumoscan.result.Result.to_dict` (:class:`ResultFields`); the routes validate what they send against these
models.

Decision support, not a diagnosis: every response that carries a score carries the disclaimer too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pneumoscan.result import CONTEXT_KEYS, RESULT_KEYS

__all__ = ["TAGS", "AuditEvent", "AuditPage", "Context", "DriftReport", "ExplainEntry", "ExplainResponse",
           "ForwardState", "ModelInfo", "ModelSummary", "OutboxEntry", "OutboxPage", "PredictEntry", "PredictResponse",
           "Problem", "Review", "ResultFields", "StoredResult", "StoredResultWithReviews", "WorklistPage"]

#: The OpenAPI tags, in the order ``/docs`` shows them.
TAGS = [
    {"name": "model", "description": "The model this server runs: its card, operating point and site state."},
    {"name": "predictions", "description": "Score uploaded films; re-render one for the viewer."},
    {"name": "worklist", "description": "The stored worklist: results, readers' reviews, the audit trail, CSV."},
    {"name": "monitoring", "description": "Whether this site's recent films still look like the training films."},
]


class Context(BaseModel):
    """An image's DICOM context (``""`` for JPEG and PNG, and for a tag the header lacks); never the patient's
    name."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = ""
    accession: str = ""
    study_date: str = Field("", description="YYYYMMDD")
    age: str = Field("", description="The DICOM Age String as written, e.g. 004Y")
    sex: str = ""
    view: str = Field("", description="ViewPosition, e.g. PA")
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""


assert tuple(Context.model_fields) == CONTEXT_KEYS  # one vocabulary: the result's context keys, in order


class ResultFields(BaseModel):
    """One image's result (:meth:`pneumoscan.result.Result.to_dict`): the same keys for an upload's result and a
    stored worklist row."""

    ok: bool = Field(description="The file was read and scored (in scope or not)")
    probability: float | None = Field(description="Calibrated probability of pneumonia in [0, 1]; out of scope it "
                                                  "is kept for audit only and is not a risk; null when not read")
    score: float | None = Field(description="The score people see, 0-100 (one decimal); null when not assessed")
    threshold: float | None = Field(description="The operating threshold on the probability scale")
    score_threshold: float | None = Field(description="The threshold on the 0-100 score")
    decision: Literal["PNEUMONIA", "NORMAL", "OUT_OF_SCOPE", ""] = Field(
        description="PNEUMONIA (flagged), NORMAL, OUT_OF_SCOPE (not assessed), or empty when not read")
    decision_text: str = Field(description="The decision in the one wording people read")
    positive: bool | None = Field(description="Flagged: possible pneumonia; null when not read")
    in_scope: bool | None = Field(description="The scope gate's verdict; null when not read")
    scope_reason: str = Field(description="Why the image was not assessed; empty in scope")
    scope_caution: str = Field("", description="In scope only: a chest radiograph unlike the training films; it is "
                                               "scored, and this caution is shown beside its score (empty "
                                               "otherwise, and for results stored before it was recorded)")
    cause: Literal["BACTERIAL", "VIRAL", ""] = Field(
        "", description="A flagged film's pattern: more like bacterial or viral pneumonia (weaker evidence than the "
                        "main finding; never a treatment recommendation); empty for every other film")
    cause_text: str = Field("", description="The cause in the one wording")
    cause_score: float | None = Field(None, description="The viral score, 0-100, of a film that has a cause")
    cause_probability: float | None = Field(None, description="P(viral) of a film that has a cause")
    cause_threshold: float | None = Field(None, description="The cause output's threshold on P(viral); null "
                                                            "for a model without one")
    score_calibration: str = Field("", description="Where the answering model's score was calibrated, in words to "
                                                   "show beside the score (empty for results stored before it was "
                                                   "recorded)")
    error: str = Field(description="Why the file could not be read; empty when it was")
    note: str = Field("", description="A problem with an output of a scored file; the score stands")
    model_name: str
    model_version: str
    context: Context


assert tuple(ResultFields.model_fields) == RESULT_KEYS


class PredictEntry(ResultFields):
    """One uploaded file's result, with what the page shows of it."""

    filename: str = Field(description="The file's name as uploaded (never stored)")
    rank: int | None = Field(None, description="Risk rank among this request's scored in-scope images (1: highest)")
    format: str | None = Field(None, description="JPEG, PNG, DICOM...")
    width: int | None = None
    height: int | None = None
    thumbnail: str | None = Field(None, description="A small JPEG data URI of the film")
    image_png: str | None = Field(None, description="With preview=true: a downscaled PNG data URI of the film")
    heatmap_png: str | None = Field(None, description="With heatmap=true, in scope: the heatmap overlay (PNG)")
    heatmap_map: str | None = Field(None, description="With heatmap=true, in scope: the map alone (grayscale JPEG)")
    heatmap_error: str | None = Field(None, description="Why no heatmap was made")
    worklist_id: int | None = Field(None, description="Its row in the worklist database")
    times_received: int | None = Field(None, description="How many times this very input (same SHA-256, same model, "
                                                         "same answer) has been received: above 1, the row "
                                                         "`worklist_id` is the earlier result, counted again")
    worklist_error: str | None = Field(None, description="Why it could not be stored")


class ModelSummary(BaseModel):
    name: str
    version: str
    threshold: float
    site_state: str


class PredictResponse(BaseModel):
    """``POST /api/v1/predict``: every file's entry, in upload order (a 4xx when none could be read)."""

    model: ModelSummary
    disclaimer: str
    results: list[PredictEntry]
    detail: str | None = Field(None, description="When no file could be read: why")


class ExplainEntry(BaseModel):
    """One file re-rendered for the viewer: the film and, on request, the result and its heatmap map."""

    model_config = ConfigDict(extra="allow")  # with heatmap=true: the result's fields (ResultFields)

    filename: str
    ok: bool
    format: str | None = None
    width: int | None = None
    height: int | None = None
    error: str = ""
    film_png: str | None = None
    film_width: int | None = None
    film_height: int | None = None
    film_scaled: bool | None = None
    film_max_side: int | None = None
    heatmap_map: str | None = None
    heatmap_error: str | None = None


class ExplainResponse(BaseModel):
    disclaimer: str
    results: list[ExplainEntry]
    detail: str | None = None


class Review(BaseModel):
    verdict: Literal["agree", "disagree"]
    note: str
    reviewer: str
    reviewed_at: str


class ForwardState(BaseModel):
    """Where a result's SR and SC stand on their way to the PACS (the DICOM node's outbox)."""

    state: Literal["pending", "delivered", "failed"] = Field(
        description="delivered: the PACS stored every object; pending: one waits (tried again with a growing "
                    "pause); failed: one was given up (last_error says why)")
    objects: int = Field(description="SR and SC objects made for this result")
    delivered: int = Field(description="How many the PACS has stored")
    attempts: int = Field(description="Tries of the object still waiting (or given up); 1 once delivered at once")
    last_error: str = Field(description="Why the last try failed, or why the object was given up; empty if none")
    last_attempt: str | None = Field(None, description="When it was last tried (ISO 8601, UTC)")
    delivered_at: str | None = Field(None, description="When the last object was stored on the PACS")
    target: str = Field("", description="The PACS, AET@HOST:PORT")


class StoredResult(ResultFields):
    """A stored worklist row: the result's fields plus what the store knows."""

    id: int
    created: str = Field(description="When it was stored (ISO 8601, UTC)")
    source: str = Field(description="Where it came from: upload, dicom, cli")
    client: str = Field(description="Who sent it: the reader's name (per-reader tokens), the shared token's short "
                                    "hash, the calling AE title, or local")
    input_sha256: str
    filename_hash: str
    review: Review | None
    n_reviews: int
    thumbnail: str | None = None
    rank: int | None = Field(None, description="In a list: the risk rank among the listed results (1: highest; "
                                               "null out of scope and for files not read)")
    uid_conflict: bool = Field(False, description="The DICOM node received this SOP Instance UID before with other "
                                                  "pixels: a second result under one UID, for a person to sort out")
    forward: ForwardState | None = Field(None, description="Its SR and SC on their way to the PACS; null when the "
                                                           "result was not forwarded")
    times_received: int = Field(1, description="How many times this very input was received (a repeat raises "
                                               "it and is audited, instead of making a second row)")
    study_key: str = Field("", description="In a list: its study, `uid:<StudyInstanceUID>` or `accession:<number>`; "
                                           "empty for a result with neither (a study of its own)")
    study_size: int | None = Field(None, description="In a list: how many listed results (all pages) share "
                                                     "`study_key`; the risk order lists them together")


class StoredResultWithReviews(StoredResult):
    reviews: list[Review]


class WorklistPage(BaseModel):
    """``GET /api/v1/worklist``: one page of the stored worklist, in the order asked for."""

    results: list[StoredResult]
    total: int = Field(description="How many results match the filters")
    limit: int
    offset: int
    order: Literal["risk", "newest", "oldest"]
    borderline: float | None
    disclaimer: str


class AuditEvent(BaseModel):
    id: int
    created: str
    event: str
    result_id: int | None
    model_name: str
    model_version: str
    client: str
    input_sha256: str
    detail: str


class AuditPage(BaseModel):
    events: list[AuditEvent]
    limit: int
    offset: int


class OutboxEntry(BaseModel):
    """One SR or SC of the DICOM node's outbox (no patient data: its result is named by ``result_id``)."""

    id: int
    result_id: int
    kind: Literal["SR", "SC"]
    state: Literal["pending", "delivered", "failed"]
    created: str | None
    attempts: int
    last_error: str
    last_attempt: str | None
    next_attempt: str | None = Field(description="When it is tried next (pending only)")
    delivered_at: str | None
    target: str
    sop_instance_uid: str = Field(description="The object's own SOP Instance UID (the same on every try)")


class OutboxPage(BaseModel):
    """``GET /api/v1/outbox``: the DICOM node's backlog for the PACS."""

    counts: dict[str, int] = Field(description="Objects pending, delivered and failed")
    state: Literal["pending", "delivered", "failed"] | None
    items: list[OutboxEntry] = Field(description="Pending: oldest first; otherwise newest first")
    limit: int
    offset: int


class DriftReport(BaseModel):
    """``GET /api/v1/drift``: the drift verdict on the server's recent in-scope images, or why there is none."""

    model_config = ConfigDict(extra="allow")  # the verdict's components (features, intensity, method...)

    available: bool
    reason: str
    n_images: int
    window: int
    min_images: int
    shifted: bool | None
    statistic: float | None
    threshold: float | None
    recent: dict[str, int] = Field(default_factory=dict, description="analysed, out_of_scope")


class ModelInfo(BaseModel):
    """``GET /api/v1/model``: the model's description, operating point, validation figures and card."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    version: str
    backend: str
    threshold: float
    temperature: float
    operating_point: dict[str, Any]
    outputs: list[str] = Field(default_factory=lambda: ["pneumonia"], description="The network's outputs")
    cause: dict[str, Any] | None = Field(None, description="The cause output's operating point, temperature and "
                                                           "validation figures; null without a cause output")
    calibration: dict[str, Any] | None
    validation: dict[str, Any]
    preprocessing: dict[str, Any]
    classes: list[str] | None
    epoch: int | None
    site_state: str
    provenance: str
    score_calibration: str = Field("", description="Where the score was calibrated, in words to show beside every "
                                                   "score")
    score_calibration_details: str = Field("", description="What the score's scale rests on (films, case mix, "
                                                           "temperature) and what it means at another case mix")
    intended_use: str
    disclaimer: str
    pneumoscan_version: str
    model_card: str | None
    model_card_html: str | None


class Problem(BaseModel):
    """An error response: what was wrong and what to do."""

    detail: str
