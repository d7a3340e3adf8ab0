"""SQLAlchemy 2 models of the node's database: every table.

The triage tables (studies, series, instances, results, claims, deliveries), then
the tables of the node's people and their actions (users, tokens, web sessions,
audit events, reading state, feedback).

A study moves through these states (``Study.state``):

``receiving``
    Instances are arriving; the study is not complete yet.
``queued``
    No instance arrived for the quiet period: the study is complete and its triage
    revision ``Study.revision`` is handed to the triage queue (``dispatched_at`` is set
    once the message is sent).
``triaging``
    A worker is running that revision.
``triaged`` / ``not_evaluated`` / ``failed``
    The revision has a result (a decision, no eligible image, or a permanent error).

A new instance in any state sets the study back to ``receiving``, so that it is
triaged again, as a new revision, once it is stable.

``patient_mismatch``
    An instance whose Patient ID differs from the study's arrived: the study is held
    (new instances keep it held, the watcher does not queue it) until an
    administrator releases it back to ``receiving``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from worklist.core.db import Base

UID = String(64)


class StudyState(StrEnum):
    """States of a study (see the module docstring)."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    TRIAGING = "triaging"
    TRIAGED = "triaged"
    NOT_EVALUATED = "not_evaluated"
    FAILED = "failed"
    PATIENT_MISMATCH = "patient_mismatch"
    """Held: an instance with another Patient ID arrived; not triaged until an
    administrator releases it (``triage-node study release``)."""


class ReadState(StrEnum):
    """Reading state of a study on the worklist.

    ``unread`` when it has no :class:`StudyRead` row; the study keeps a copy in
    ``Study.read_state``.
    """

    UNREAD = "unread"
    CLAIMED = "claimed"
    COMPLETED = "completed"


class Study(Base):
    """A study, identified by its Study Instance UID."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    patient_age: Mapped[str | None] = mapped_column(String(4))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician: Mapped[str | None] = mapped_column(String(324))
    requested_priority: Mapped[str | None] = mapped_column(String(16))

    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The :class:`StudyRead` state, or ``unread`` without one (set with it by
    #: :mod:`worklist.reading`), so that the worklist reads only the studies in reading.
    read_state: Mapped[str] = mapped_column(
        String(16), default=ReadState.UNREAD, server_default=ReadState.UNREAD.value
    )

    series: Mapped[list[Series]] = relationship(back_populates="study")
    instances: Mapped[list[Instance]] = relationship(back_populates="study")

    __table_args__ = (
        Index("ix_studies_state_last", "state", "last_received_at"),
        # The worklist's query: the studies in reading, oldest first.
        Index("ix_studies_read_state_received", "read_state", "first_received_at"),
    )


class Series(Base):
    """A series of a study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[str | None] = mapped_column(String(12))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """A received SOP instance and where its bytes are in the spool."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    image_laterality: Mapped[str | None] = mapped_column(String(16))
    photometric_interpretation: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    samples_per_pixel: Mapped[int | None] = mapped_column(Integer)
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    patient_age: Mapped[str | None] = mapped_column(String(4))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    receive_count: Mapped[int] = mapped_column(Integer, default=1)
    file_path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)

    study: Mapped[Study] = relationship(back_populates="instances")
    series: Mapped[Series] = relationship(back_populates="instances")


# Triage results and their delivery ------------------------------------------------


class TriageStatus(StrEnum):
    """Outcome of one triage revision (also the study's final state)."""

    TRIAGED = "triaged"
    NOT_EVALUATED = "not_evaluated"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """States of an outbox row: ``pending`` -> ``sending`` -> ``delivered`` | ``failed``.

    A ``sending`` row whose lease expired (its worker died) is due again.
    """

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryKind(StrEnum):
    """What an outbox row sends: the result's SR, or a heatmap Secondary Capture of one
    evaluated image (``heatmap_to_pacs``)."""

    SR = "sr"
    HEATMAP_SC = "heatmap_sc"


class TriageResult(Base):
    """The result of one triage revision of a study (one row per study and revision).

    It carries the model's provenance (name, version, sha256), the decision at the
    operating point, the worklist priority and the timings; its images are in
    :class:`TriageImage` and its SR deliveries in :class:`Delivery`.
    """

    __tablename__ = "triage_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(512))
    decision: Mapped[str | None] = mapped_column(String(16))
    probability: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    aggregation: Mapped[str] = mapped_column(String(16))
    operating_point: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float | None] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    model_manufacturer: Mapped[str | None] = mapped_column(String(128))
    providers: Mapped[str | None] = mapped_column(String(256))
    priority: Mapped[int] = mapped_column(Integer)
    priority_reason: Mapped[str] = mapped_column(String(256))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    sr_series_instance_uid: Mapped[str | None] = mapped_column(UID)
    sr_path: Mapped[str | None] = mapped_column(String(1024))

    images: Mapped[list[TriageImage]] = relationship(
        back_populates="result", order_by="TriageImage.id"
    )
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="result", order_by="Delivery.id"
    )

    __table_args__ = (
        UniqueConstraint("study_id", "revision", name="uq_triage_results_study_revision"),
    )


class TriageImage(Base):
    """One instance as a triage revision saw it: evaluated with a probability, or
    skipped with a recorded reason."""

    __tablename__ = "triage_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("triage_results.id"), index=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    evaluated: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(512))
    logit: Mapped[float | None] = mapped_column(Float)
    probability: Mapped[float | None] = mapped_column(Float)

    result: Mapped[TriageResult] = relationship(back_populates="images")


class TriageClaim(Base):
    """Which worker is running a study revision, since when (a lease the sweeper reads
    to re-dispatch revisions whose worker died)."""

    __tablename__ = "triage_claims"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    claimed_by: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        UniqueConstraint("study_id", "revision", name="uq_triage_claims_study_revision"),
    )


class Delivery(Base):
    """Outbox row: one DICOM object of a result (its SR, or a heatmap Secondary Capture)
    to send to one destination, with its retry state."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("triage_results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(String(16), default=DeliveryKind.SR, server_default="sr")
    file_path: Mapped[str] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(1024))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    result: Mapped[TriageResult] = relationship(back_populates="deliveries")

    __table_args__ = (
        UniqueConstraint(
            "result_id",
            "destination",
            "sop_instance_uid",
            name="uq_deliveries_result_destination_object",
        ),
        Index("ix_deliveries_state_next", "state", "next_attempt_at"),
    )


# People and their actions ---------------------------------------------------------


class Role(StrEnum):
    """Roles of a user.

    ``radiologist``
        Reads the worklist and studies, claims/releases/completes studies, gives feedback.
    ``admin``
        Everything a radiologist can, plus the audit log and monitoring.
    ``service``
        A system such as the RIS (with a bearer token): reads the worklist, studies and
        the model card; no actions.
    """

    RADIOLOGIST = "radiologist"
    ADMIN = "admin"
    SERVICE = "service"


class User(Base):
    """A local account; the password is stored as an Argon2id hash only."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A bearer token of a system (RIS); only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship()


class WebSession(Base):
    """A web page session; the cookie holds a random key, the row its keyed hash."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship()


class AuditEvent(Base):
    """One view of patient data, action or authentication event (append-only).

    ``detail`` never holds patient names or IDs; studies are referenced by their
    Study Instance UID.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(16))
    auth_method: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    object_uid: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(String(1024))

    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
        Index("ix_audit_events_username_at", "username", "at"),
        Index("ix_audit_events_client_ip_at", "client_ip", "at"),
    )


class StudyRead(Base):
    """Reading state of a study: who claimed it, whether the read is complete."""

    __tablename__ = "study_reads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(Integer, default=0)

    user: Mapped[User] = relationship()


class Feedback(Base):
    """A radiologist's label of a study and whether it agrees with the AI decision.

    The AI decision, probability, model and the patient's sex and age band are copied
    at feedback time so that monitoring never re-derives them.
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    result_id: Mapped[int | None] = mapped_column(ForeignKey("triage_results.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    label: Mapped[str] = mapped_column(String(16))
    agree: Mapped[bool | None] = mapped_column(Boolean)
    ai_decision: Mapped[str | None] = mapped_column(String(16))
    ai_probability: Mapped[float | None] = mapped_column(Float)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    age_band: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship()

    __table_args__ = (
        UniqueConstraint("study_id", "revision", "user_id", name="uq_feedback_study_rev_user"),
        Index("ix_feedback_created_at", "created_at"),
    )


# Models the node manages ------------------------------------------------------------


class ModelRole(StrEnum):
    """Role of a registered model.

    ``champion``
        Decides the priority and writes the SR (exactly one at a time).
    ``shadow``
        Scores every new study beside the champion; never sent, never shown as the
        decision.
    ``retired``
        Kept for provenance and rollback; scores nothing.
    """

    CHAMPION = "champion"
    SHADOW = "shadow"
    RETIRED = "retired"


class ModelEntry(Base):
    """A registered ONNX model: its weights hash, where its file is, its card."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    version: Mapped[str] = mapped_column(String(64))
    #: Weights SHA-256 (the card's ``sha256``, recorded with every result).
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    file_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    card: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelPromotion(Base):
    """One change of champion: which model, over which, by whom, forced or not.

    ``rolled_back_at`` is set when :func:`worklist.model_registry.rollback` undid it,
    so that rollbacks walk back through the promotions one at a time.
    """

    __tablename__ = "model_promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    previous_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    username: Mapped[str | None] = mapped_column(String(64))
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(String(1024))
    rolled_back_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ShadowResult(Base):
    """A shadow model's score of one triage revision, beside the champion's result.

    Never delivered, never the decision: it is there to compare models on the
    radiologists' labels. Each row names the model and the operating point used.
    """

    __tablename__ = "shadow_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("triage_results.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    operating_point: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(16))
    images: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("result_id", "model_sha256", name="uq_shadow_results_result_model"),
    )
