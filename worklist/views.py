"""The read side's models: the worklist's filters and rows, a study's detail.

Built by :mod:`worklist.queries` and answered as they are by the HTTP API
(:mod:`worklist.http`), which imports them from here.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field, computed_field

from worklist.dicom_values import sex_age
from worklist.display import plain_skip_reason, probability_text

__all__ = [
    "DeliveryOut",
    "FeedbackOut",
    "ImageOut",
    "ModelSummary",
    "ResultOut",
    "StudyDetail",
    "WorklistFilters",
    "WorklistRow",
]


class WorklistFilters(BaseModel):
    """Filters of :func:`list_worklist` (all optional; lists are OR-ed)."""

    state: list[str] = Field(default_factory=list, description="Study states.")
    read_state: list[str] = Field(
        default_factory=list,
        description="unread, claimed, completed; default unread and claimed.",
    )
    priority: list[int] = Field(default_factory=list, description="Effective levels.")
    date_from: date | None = Field(None, description="Study date on or after.")
    date_to: date | None = Field(None, description="Study date on or before.")
    modality: list[str] = Field(default_factory=list, description="Series modality.")
    received_within_days: int | None = Field(
        None, ge=1, description="Only studies whose first instance arrived in the last N days."
    )
    limit: int = Field(200, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class WorklistRow(BaseModel):
    """One study on the worklist."""

    study_instance_uid: str
    accession_number: str | None
    patient_name: str | None
    patient_id: str | None
    patient_sex: str | None
    patient_age: str | None
    study_date: str | None
    study_description: str | None
    modalities: list[str]
    state: str
    state_reason: str | None = Field(
        None, description="Why the study is in its state, when it needs an administrator."
    )
    read_state: str
    claimed_by: str | None
    priority: int = Field(description="Effective priority (smaller is read first).")
    stored_priority: int | None = Field(description="Priority stored with the result.")
    priority_name: str
    priority_label: str
    priority_colour: str
    priority_reason: str | None
    decision: str | None
    probability: float | None
    received_at: datetime
    waiting_seconds: float
    triaged_at: datetime | None
    instance_count: int
    revision: int
    opened_by: list[str] = Field(
        default_factory=list, description="Who opened the study page (oldest first)."
    )

    @computed_field(description="Sex and age as people write them, e.g. 'M 67'.")  # type: ignore[prop-decorator]
    @property
    def sex_age(self) -> str:
        return sex_age(self.patient_sex, self.patient_age)

    @computed_field(description="The probability as shown: '71 %', '> 99 %', '< 1 %'.")  # type: ignore[prop-decorator]
    @property
    def probability_text(self) -> str:
        return probability_text(self.probability)


class ImageOut(BaseModel):
    """An instance of a study and what the latest triage did with it."""

    sop_instance_uid: str
    series_instance_uid: str
    series_number: str | None
    series_description: str | None
    modality: str | None
    view_position: str | None
    image_laterality: str | None
    rows: int | None
    columns: int | None
    evaluated: bool | None = Field(description="None: no triage result covers it yet.")
    probability: float | None
    reason: str | None = Field(description="Why the image was skipped (selection rule).")

    @computed_field(description="The skip reason in plain words, e.g. 'lateral view'.")  # type: ignore[prop-decorator]
    @property
    def reason_text(self) -> str | None:
        if self.evaluated:
            return None
        return plain_skip_reason(self.reason, self.modality)

    @computed_field(description="The image's probability as shown.")  # type: ignore[prop-decorator]
    @property
    def probability_text(self) -> str:
        return probability_text(self.probability)


class DeliveryOut(BaseModel):
    """Delivery of one of the result's objects (its SR, a heatmap SC) to one destination."""

    destination: str
    kind: str = Field("sr", description="sr (the result's SR) or heatmap_sc.")
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class ModelSummary(BaseModel):
    """The model that produced a result (provenance)."""

    name: str
    version: str
    sha256: str
    manufacturer: str | None
    operating_point: str
    threshold: float | None
    aggregation: str
    providers: str | None


class ResultOut(BaseModel):
    """A study's latest triage result."""

    revision: int
    status: str
    reason: str | None
    decision: str | None
    probability: float | None
    score: float | None
    priority: int
    priority_reason: str
    model: ModelSummary
    queued_at: datetime | None
    started_at: datetime
    finished_at: datetime
    seconds_from_arrival: float | None
    inference_seconds: float
    sr_sop_instance_uid: str | None
    delivery_state: str = Field(description="none, pending, delivered, failed, partial.")
    deliveries: list[DeliveryOut]

    @computed_field(description="The probability as shown: '71 %', '> 99 %', '< 1 %'.")  # type: ignore[prop-decorator]
    @property
    def probability_text(self) -> str:
        return probability_text(self.probability)


class FeedbackOut(BaseModel):
    """One radiologist's feedback on a study."""

    username: str
    label: str
    agree: bool | None
    ai_decision: str | None
    revision: int
    comment: str | None
    created_at: datetime
    updated_at: datetime


class StudyDetail(BaseModel):
    """A study with its images, result, deliveries, reading state and feedback."""

    row: WorklistRow
    patient_birth_date: str | None
    referring_physician: str | None
    requested_priority: str | None
    images: list[ImageOut]
    result: ResultOut | None
    feedback: list[FeedbackOut]
    viewer_url: str | None
