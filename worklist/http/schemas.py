"""The HTTP API's own schemas: the bodies it accepts and its answers to actions.

The answers about studies (the worklist's rows, a study's detail) are the read side's
models, :mod:`worklist.views`, which :mod:`worklist.queries` builds. Patient data
appears only in those answers, never in the audit log.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["FeedbackIn", "FeedbackSaved", "Me", "ReadStateOut"]


# Reading -----------------------------------------------------------------------------


class FeedbackIn(BaseModel):
    """A radiologist's feedback on a study's latest result."""

    label: Literal["normal", "abnormal"] = Field(description="The radiologist's own read.")
    agree: bool | None = Field(
        None, description="Agree with the AI decision; must match the label when given."
    )
    comment: str | None = Field(None, max_length=1024)


class ReadStateOut(BaseModel):
    """The reading state of a study after an action."""

    study_instance_uid: str
    read_state: str
    claimed_by: str | None


class FeedbackSaved(BaseModel):
    """Feedback as stored."""

    study_instance_uid: str
    label: str
    agree: bool | None
    ai_decision: str | None
    revision: int


# The caller --------------------------------------------------------------------------


class Me(BaseModel):
    """The caller."""

    username: str
    role: str
    auth_method: str
    csrf_token: str | None
