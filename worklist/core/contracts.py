"""What the node's processes agree on: task and queue names, the triage queue, instance types.

The SCP sends the triage task by name and the workers register it under the same
name, so neither imports the other; both import these names from here.

Queues and tasks (served by separate worker processes, so that a slow PACS link
never holds the inference workers):

- ``inference``: :data:`TASK_TRIAGE` ``(study_id, revision)``;
- ``delivery``: :data:`TASK_DELIVER` ``(delivery_id,)`` and :data:`TASK_SWEEP` ``()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

INFERENCE_QUEUE = "inference"
"""Queue of the triage task."""
DELIVERY_QUEUE = "delivery"
"""Queue of the delivery and sweep tasks."""

TASK_TRIAGE = "triage.triage_study"
"""Triages one study revision: ``(study_id, revision)``."""
TASK_DELIVER = "triage.deliver"
"""Sends one result to one destination: ``(delivery_id,)``."""
TASK_SWEEP = "triage.sweep"
"""Re-sends stalled revisions and deliveries: ``()``."""


class TriageQueue(Protocol):
    """Where stable studies go: the SCP side knows only this interface."""

    def enqueue(self, study_id: int, revision: int) -> None:
        """Hand ``(study_id, revision)`` to the triage workers; raise on failure."""


@dataclass(frozen=True)
class InstanceInfo:
    """What the database keeps of one received instance (read from its header).

    Attributes mirror :class:`worklist.tables.Instance`, :class:`~worklist.tables.Series`
    and :class:`~worklist.tables.Study` columns.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str
    size_bytes: int
    calling_ae: str | None = None
    peer_address: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    image_laterality: str | None = None
    photometric_interpretation: str | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    samples_per_pixel: int | None = None
    series_description: str | None = None
    series_number: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    patient_age: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    requested_priority: str | None = None


class RecordOutcome(StrEnum):
    """What :func:`worklist.ingest.record_instance` did with one instance."""

    NEW = "new"
    """A new instance; its study is (again) receiving."""
    DUPLICATE = "duplicate"
    """The SOP Instance UID was known; the row was refreshed, nothing duplicated."""
    NEW_VERSION = "new_version"
    """The SOP Instance UID was known with other content: the new content replaces it
    and its study is (again) receiving."""
