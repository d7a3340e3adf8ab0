"""Triage of one study revision, as a plain function (no Celery, no network).

:func:`triage_study` claims the revision, reads the study's instances from the
spool, selects the images the model is for, preprocesses them exactly as the
model card says, runs the classifier in batches, scores the study, writes the SR
and records the result, its images and its outbox rows. It is idempotent: a
revision that is done or no longer current is not redone.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from triage.operating_point import applied_operating_point
from triage.options import TriageOptions
from triage.scoring import score_study
from triage.selection import Eligible, Skipped, select_instance, skipped_unreadable
from triage.sr import SRContent, build_sr, sr_uids, write_sr
from worklist.core.clock import utcnow
from worklist.priority import compute_priority
from worklist.results import (
    Claim,
    ClaimStatus,
    ImageRecord,
    ResultRecord,
    claim_revision,
    release_claim,
    result_for,
    save_result,
)
from worklist.tables import Delivery, DeliveryState, TriageStatus

__all__ = ["DEFERRED", "MAX_ATTEMPTS", "TriageOutcome", "triage_study", "worker_id"]

log = logging.getLogger(__name__)

#: A revision claimed this many times without a result is recorded as failed
#: (an image that kills the worker must not loop forever).
MAX_ATTEMPTS = 3
#: Outcome status of a revision given back without a result (the SR could not be
#: written); it is triaged again after the lease.
DEFERRED = "deferred"


@dataclass(frozen=True)
class TriageOutcome:
    """What :func:`triage_study` did.

    Attributes
    ----------
    study_id, revision : int
    claim : ClaimStatus
        ``claimed`` (this call did the work), ``done`` (already done) or
        ``stale`` (nothing to do).
    result_id : int or None
    status : str or None
        ``triaged``, ``not_evaluated`` or ``failed``; ``deferred`` when the SR
        could not be written and the revision was given back (no result).
    decision : str or None
    deliveries : tuple of int
        Outbox rows of the result still to be sent.
    timings : dict
        Seconds spent reading, preprocessing, inferring, writing.
    """

    study_id: int
    revision: int
    claim: ClaimStatus
    result_id: int | None = None
    status: str | None = None
    decision: str | None = None
    deliveries: tuple[int, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)


def worker_id() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Image:
    instance_id: int
    sop_instance_uid: str
    header: Dataset | None = None
    selection: Eligible | Skipped | None = None
    tensor: np.ndarray | None = None


def _read(ref_id: int, uid: str, path: str) -> _Image:
    image = _Image(ref_id, uid)
    try:
        # Large elements (pixel data) are read on access, so selection reads headers.
        image.header = pydicom.dcmread(path, defer_size="256 KB")
    except FileNotFoundError:
        image.selection = skipped_unreadable(uid, f"file missing from the spool: {path}")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a recorded reason
        image.selection = skipped_unreadable(uid, f"{type(exc).__name__}: {exc}")
    if image.header is not None:
        try:
            image.selection = select_instance(image.header)
        except Exception as exc:  # noqa: BLE001 - a broken header is a recorded reason
            image.selection = skipped_unreadable(uid, f"{type(exc).__name__}: {exc}")
    return image


def _preprocess(image: _Image, spec: Any) -> None:
    from models.preprocess import PreprocessError, preprocess_dataset

    try:
        image.tensor = preprocess_dataset(image.header, spec)
    except PreprocessError as exc:
        image.selection = skipped_unreadable(image.sop_instance_uid, str(exc), decode=True)
    except Exception as exc:  # noqa: BLE001 - one broken image: skip it, keep the rest
        image.selection = skipped_unreadable(
            image.sop_instance_uid, f"{type(exc).__name__}: {exc}", decode=True
        )


def _pending_deliveries(session_factory: sessionmaker, result_id: int) -> tuple[int, ...]:
    from sqlalchemy import select

    with session_factory() as session:
        return tuple(
            session.scalars(
                select(Delivery.id).where(
                    Delivery.result_id == result_id,
                    Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]),
                )
            )
        )


def _done(session_factory: sessionmaker, claim: Claim) -> TriageOutcome:
    with session_factory() as session:
        result = result_for(session, study_id=claim.study_id, revision=claim.revision)
        status = result.status if result else None
        decision = result.decision if result else None
        result_id = result.id if result else claim.result_id
    return TriageOutcome(
        claim.study_id,
        claim.revision,
        ClaimStatus.DONE,
        result_id=result_id,
        status=status,
        decision=decision,
        deliveries=_pending_deliveries(session_factory, result_id) if result_id else (),
    )


def triage_study(
    session_factory: sessionmaker,
    settings: Any,
    classifier: Any,
    study_id: int,
    revision: int,
    *,
    options: TriageOptions | None = None,
) -> TriageOutcome:
    """Triage one study revision and record the result (idempotent).

    Parameters
    ----------
    session_factory : sessionmaker
        Sessions on the node's database.
    settings : Settings
        ``operating_point``, ``destinations``, ``data_dir``, ``ae_title`` are used.
    classifier : models.runtime.Classifier or a callable returning one
        The model (its card gives preprocessing, calibration, thresholds). A
        callable is called only when there is an image to score, so a study with
        nothing eligible never loads the model.
    study_id, revision : int
    options : TriageOptions, optional

    Returns
    -------
    TriageOutcome
    """
    options = options or TriageOptions()
    with session_factory.begin() as session:
        claim = claim_revision(session, study_id=study_id, revision=revision, worker=worker_id())
    if claim.status is ClaimStatus.DONE:
        log.info("study %s revision %s already triaged; not redone", study_id, revision)
        return _done(session_factory, claim)
    if claim.status is ClaimStatus.STALE:
        log.info("study %s revision %s not triaged: %s", study_id, revision, claim.detail)
        return TriageOutcome(study_id, revision, ClaimStatus.STALE)
    started = claim.claimed_at or utcnow()
    timings: dict[str, float] = {}

    if claim.attempts > MAX_ATTEMPTS:
        return _record(
            session_factory,
            settings,
            options,
            claim,
            started,
            status=TriageStatus.FAILED,
            reason=(
                f"gave up after {claim.attempts - 1} attempts without a result "
                "(worker lost or a permanent error; see the worker logs)"
            ),
            images=[],
            card=None,
            providers=None,
            timings=timings,
        )

    t0 = time.perf_counter()
    images = [_read(ref.id, ref.sop_instance_uid, ref.file_path) for ref in claim.instances]
    timings["read"] = time.perf_counter() - t0
    eligible = [im for im in images if isinstance(im.selection, Eligible)]
    if not eligible:
        return _record(
            session_factory,
            settings,
            options,
            claim,
            started,
            status=TriageStatus.NOT_EVALUATED,
            reason=_not_evaluated_reason(images),
            images=images,
            card=None,
            providers=None,
            timings=timings,
        )

    clf = classifier() if callable(classifier) and not hasattr(classifier, "card") else classifier
    card = clf.card
    spec = card.preprocess_spec
    t0 = time.perf_counter()
    for image in eligible:
        _preprocess(image, spec)
    timings["preprocess"] = time.perf_counter() - t0
    scored = [im for im in eligible if isinstance(im.selection, Eligible)]
    if not scored:
        return _record(
            session_factory,
            settings,
            options,
            claim,
            started,
            status=TriageStatus.NOT_EVALUATED,
            reason=_not_evaluated_reason(images),
            images=images,
            card=card,
            providers=clf.active_providers,
            timings=timings,
        )
    t0 = time.perf_counter()
    batch = np.stack([im.tensor for im in scored]).astype(np.float32, copy=False)
    logits = np.asarray(clf.predict_logits(batch), dtype=np.float32).reshape(-1)
    timings["inference"] = time.perf_counter() - t0
    # the card's point, or its population's by the patient's age (header)
    applied = applied_operating_point(card, settings.operating_point, [im.header for im in scored])
    study_score = score_study(
        logits,
        calibrate=card.calibrate,
        threshold=applied.threshold,
        operating_point=applied.label,
        how=options.aggregation,
    )
    per_image = {
        im.sop_instance_uid: (float(lg), p)
        for im, lg, p in zip(scored, logits, study_score.image_probabilities, strict=True)
    }
    return _record(
        session_factory,
        settings,
        options,
        claim,
        started,
        status=TriageStatus.TRIAGED,
        reason=None,
        images=images,
        card=card,
        providers=clf.active_providers,
        timings=timings,
        score=study_score,
        per_image=per_image,
        evidence=[im.header for im in scored],
    )


def _previous_srs(session_factory: sessionmaker, claim: Claim) -> list[Dataset]:
    """The SR of the latest earlier revision of the study, when its file is still there."""
    from sqlalchemy import select

    from worklist.tables import TriageResult

    with session_factory() as session:
        path = session.scalar(
            select(TriageResult.sr_path)
            .where(
                TriageResult.study_id == claim.study_id,
                TriageResult.revision < claim.revision,
                TriageResult.sr_path.is_not(None),
            )
            .order_by(TriageResult.revision.desc())
            .limit(1)
        )
    if not path:
        return []
    try:
        return [pydicom.dcmread(path, stop_before_pixels=True)]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        log.warning("earlier SR %s not readable (%s); not listed as predecessor", path, exc)
        return []


def _not_evaluated_reason(images: list[_Image]) -> str:
    if not images:
        return "no instance in the study"
    reasons = sorted({im.selection.reason for im in images if isinstance(im.selection, Skipped)})
    return "no eligible image: " + "; ".join(reasons)


def _record(
    session_factory: sessionmaker,
    settings: Any,
    options: TriageOptions,
    claim: Claim,
    started: datetime,
    *,
    status: TriageStatus,
    reason: str | None,
    images: list[_Image],
    card: Any,
    providers: list[str] | None,
    timings: dict[str, float],
    score: Any = None,
    per_image: dict[str, tuple[float, float]] | None = None,
    evidence: list[Dataset] | None = None,
) -> TriageOutcome:
    per_image = per_image or {}
    finished = utcnow()
    priority = compute_priority(
        status=status.value,
        decision=score.decision.value if score else None,
        probability=score.probability if score else None,
        requested_priority=claim.requested_priority,
        high_confidence=options.high_confidence,
    )
    sr_path = sr_series = sr_sop = None
    if status is TriageStatus.TRIAGED and score is not None and evidence:
        t0 = time.perf_counter()
        sr_series, sr_sop = sr_uids(claim.study_instance_uid, claim.revision)
        sr = build_sr(
            SRContent(
                study_instance_uid=claim.study_instance_uid,
                revision=claim.revision,
                decision=score.decision.value,
                probability=score.probability,
                threshold=score.threshold,
                operating_point=score.operating_point,
                model_name=card.name,
                model_version=card.version,
                model_sha256=card.sha256,
                manufacturer=getattr(card, "manufacturer", "") or "cxr-triage-node",
                device_name=getattr(settings, "ae_title", "TRIAGE"),
                content_datetime=finished,
            ),
            evidence,
            previous=_previous_srs(session_factory, claim),
        )
        try:
            sr_path = str(write_sr(sr, Path(settings.data_dir) / "results"))
        except OSError as exc:
            # A full or failing results disk is not the study's fault: give the
            # revision back uncounted; the sweep sends it again after the lease.
            with session_factory.begin() as session:
                release_claim(session, study_id=claim.study_id, revision=claim.revision)
            log.warning(
                "study %s revision %s: cannot write the SR (%s); released, retried after the lease",
                claim.study_id,
                claim.revision,
                exc,
            )
            return TriageOutcome(
                claim.study_id, claim.revision, ClaimStatus.CLAIMED, status=DEFERRED
            )
        timings["sr"] = time.perf_counter() - t0
    image_records = []
    for im in images:
        sel = im.selection
        logit, prob = per_image.get(im.sop_instance_uid, (None, None))
        image_records.append(
            ImageRecord(
                instance_id=im.instance_id,
                sop_instance_uid=im.sop_instance_uid,
                evaluated=im.sop_instance_uid in per_image,
                reason=sel.reason if isinstance(sel, Skipped) else None,
                logit=logit,
                probability=prob,
            )
        )
    record = ResultRecord(
        study_id=claim.study_id,
        revision=claim.revision,
        status=status.value,
        reason=reason,
        decision=score.decision.value if score else None,
        probability=score.probability if score else None,
        score=score.score if score else None,
        threshold=score.threshold
        if score
        else (card.threshold(settings.operating_point) if card is not None else None),
        aggregation=options.aggregation,
        operating_point=score.operating_point if score else settings.operating_point,
        model_name=card.name if card is not None else "",
        model_version=card.version if card is not None else "",
        model_sha256=card.sha256 if card is not None else "",
        model_manufacturer=getattr(card, "manufacturer", None) if card is not None else None,
        providers=",".join(providers) if providers else None,
        priority=int(priority.priority),
        priority_reason=priority.reason,
        queued_at=claim.queued_at,
        started_at=started,
        finished_at=finished,
        sr_sop_instance_uid=sr_sop,
        sr_series_instance_uid=sr_series,
        sr_path=sr_path,
        images=image_records,
        destinations=[str(d) for d in getattr(settings, "destinations", [])],
    )
    try:
        with session_factory.begin() as session:
            result_id = save_result(session, record=record)
    except IntegrityError:
        log.info(
            "study %s revision %s was recorded by another worker meanwhile",
            claim.study_id,
            claim.revision,
        )
        return _done(session_factory, claim)
    log.info(
        "study %s revision %s: %s%s, priority %s (%s); %d image(s), %d evaluated; %s",
        claim.study_id,
        claim.revision,
        status.value,
        f" {score.decision.value} p={score.probability:.3f}" if score else "",
        int(priority.priority),
        priority.reason,
        len(images),
        len(per_image),
        ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()),
    )
    return TriageOutcome(
        claim.study_id,
        claim.revision,
        ClaimStatus.CLAIMED,
        result_id=result_id,
        status=status.value,
        decision=score.decision.value if score else None,
        deliveries=_pending_deliveries(session_factory, result_id),
        timings=timings,
    )
