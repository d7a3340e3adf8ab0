"""Triage of one study revision, as a plain function (no Celery, no network).

:func:`triage_study` claims the revision, reads the study's instances from the
spool, selects the images the model is for and decodes and preprocesses them exactly
as the model card says (:func:`_prepare`), runs the classifier in batches and scores
the study (:func:`_score`, a :class:`StudyEvaluation`); then :func:`write_study_sr`
writes the SR and :func:`result_record` turns the evaluation into the row that
records the result, its images and its outbox rows. It is idempotent: a revision
that is done or no longer current is not redone.

:func:`triage_batch` does the same for the revision and other revisions waiting
(a burst of studies), with one classifier call for all their images; each revision
is still scored, written and recorded on its own.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.cam_output import cam_heatmap
from models.card import ModelCard
from models.occlusion import PATCHES_PER_SIDE, occlusion_map
from models.population import intended_population, population_warning
from models.preprocess import PreprocessSpec
from models.runtime import Classifier
from triage.guarded_decode import GuardedDecoder, get_decoder
from triage.heatmap_sc import HeatmapProvenance, write_study_heatmap_scs
from triage.operating_point import applied_operating_point
from triage.scoring import StudyScore, score_study
from triage.selection import Eligible, SkipCode, Skipped, select_instance, skipped_unreadable
from triage.sr import SRContent, build_sr, sr_uids, write_sr
from worklist.core.clock import as_utc, utcnow
from worklist.core.processes import process_alive
from worklist.core.settings import Settings
from worklist.dicom_values import age_years
from worklist.heatmaps import heatmap_path, save_heatmap
from worklist.priority import PriorityDecision, compute_priority
from worklist.results import (
    Claim,
    ClaimStatus,
    ImageRecord,
    OutboxObject,
    ResultRecord,
    claim_revision,
    claim_waiting,
    release_claim,
    result_for,
    save_result,
)
from worklist.tables import Delivery, DeliveryState, TriageClaim, TriageResult, TriageStatus

__all__ = [
    "BATCH",
    "DEFERRED",
    "MAX_ATTEMPTS",
    "StudyEvaluation",
    "TriageOutcome",
    "WrittenSR",
    "result_record",
    "triage_batch",
    "triage_study",
    "worker_id",
    "write_study_sr",
]

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


#: Longest a worker spends on the heatmaps of one study (estimated from its inference).
HEATMAP_BUDGET_S = 20.0


@dataclass
class _Image:
    instance_id: int
    sop_instance_uid: str
    path: str = ""
    header: Dataset | None = None
    selection: Eligible | Skipped | None = None
    tensor: np.ndarray | None = None


def _read(ref_id: int, uid: str, path: str) -> _Image:
    image = _Image(ref_id, uid, path)
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


def _decode(
    image: _Image, spec: PreprocessSpec | None, decoder: GuardedDecoder, data_dir: Path
) -> None:
    """Decode (and preprocess, with a spec) one image in the guarded decode child;
    store its preview. A failure is the image's recorded reason."""
    from worklist.thumbnails import store_thumbnail

    made = decoder.decode(image.path, spec.to_dict() if spec is not None else None)
    if made.png is not None:
        try:
            store_thumbnail(data_dir, image.instance_id, made.png)
        except OSError as exc:
            log.warning("preview of instance %s not stored: %s", image.instance_id, exc)
    if spec is None:
        return
    if made.error is not None or made.tensor is None:
        reason = made.error or "cannot decode pixel data: no image"
        image.selection = skipped_unreadable(image.sop_instance_uid, reason, decode=True)
    else:
        image.tensor = made.tensor


def _previews(images: list[_Image], decoder: GuardedDecoder, data_dir: Path) -> None:
    """Previews of the images the model is not for (laterals, other modalities)."""
    for image in images:
        if (
            image.header is not None
            and isinstance(image.selection, Skipped)
            and image.selection.code is not SkipCode.UNREADABLE
            and "PixelData" in image.header
        ):
            _decode(image, None, decoder, data_dir)


def _pending_deliveries(session_factory: sessionmaker[Session], result_id: int) -> tuple[int, ...]:
    with session_factory() as session:
        return tuple(
            session.scalars(
                select(Delivery.id)
                .where(
                    Delivery.result_id == result_id,
                    Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]),
                )
                .order_by(Delivery.id)  # the SR first
            )
        )


def _done(session_factory: sessionmaker[Session], claim: Claim) -> TriageOutcome:
    """The outcome of a revision found done, with its deliveries still to be sent (sent
    again by the caller, as after a crash), except for a revision a batch recorded:
    that batch sends them (and the sweep, should it have died before)."""
    with session_factory() as session:
        result = result_for(session, study_id=claim.study_id, revision=claim.revision)
        status = result.status if result else None
        decision = result.decision if result else None
        result_id = result.id if result else claim.result_id
        claimed_by = session.scalar(
            select(TriageClaim.claimed_by).where(
                TriageClaim.study_id == claim.study_id, TriageClaim.revision == claim.revision
            )
        )
    batched = claimed_by is not None and claimed_by.startswith(BATCH)
    return TriageOutcome(
        claim.study_id,
        claim.revision,
        ClaimStatus.DONE,
        result_id=result_id,
        status=status,
        decision=decision,
        deliveries=(
            _pending_deliveries(session_factory, result_id) if result_id and not batched else ()
        ),
    )


@dataclass
class StudyEvaluation:
    """What triage found in one study revision, before anything is written.

    Attributes
    ----------
    status : TriageStatus
        ``triaged``, ``not_evaluated`` or ``failed``.
    reason : str or None
        Why the study was not evaluated or failed.
    images : list
        Every instance of the revision, with its selection.
    card : ModelCard or None
        The model's card, once the model was loaded.
    providers : list of str or None
        ONNX Runtime's active providers, once the model was loaded.
    score : StudyScore or None
        The study's score (``triaged`` only).
    per_image : dict
        ``{sop_instance_uid: (logit, probability)}`` of the images scored.
    evidence : list of Dataset
        Headers of the images scored (the SR's evidence).
    scored : list of (str, numpy.ndarray, float)
        SOP Instance UID, model input and logit of each image scored (for heatmaps).
    predict_logits : callable or None
        The model's logits function (for occlusion heatmaps).
    cams : dict
        ``{sop_instance_uid: (h, w) class-activation map}`` of the images scored, when
        the model's card declares a ``cam`` output (same run as the logits).
    """

    status: TriageStatus
    reason: str | None
    images: list[_Image]
    card: ModelCard | None = None
    providers: list[str] | None = None
    score: StudyScore | None = None
    per_image: dict[str, tuple[float, float]] = field(default_factory=dict)
    evidence: list[Dataset] = field(default_factory=list)
    scored: list[tuple[str, np.ndarray, float]] = field(default_factory=list)
    predict_logits: Callable[[np.ndarray], np.ndarray] | None = None
    cams: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class WrittenSR:
    """Where :func:`write_study_sr` wrote the SR, and its UIDs."""

    path: str
    series_instance_uid: str
    sop_instance_uid: str


def triage_study(
    session_factory: sessionmaker[Session],
    settings: Settings,
    classifier: Classifier | Callable[[], Classifier],
    study_id: int,
    revision: int,
    *,
    decoder: GuardedDecoder | None = None,
) -> TriageOutcome:
    """Triage one study revision and record the result (idempotent).

    Parameters
    ----------
    session_factory : sessionmaker
        Sessions on the node's database.
    settings : Settings
        ``operating_point``, ``aggregation``, ``high_confidence``, ``destinations``,
        ``data_dir``, ``ae_title`` and ``lease_seconds`` are used.
    classifier : models.runtime.Classifier or a callable returning one
        The model (its card gives preprocessing, calibration, thresholds). A
        callable is called only when there is an image to score, so a study with
        nothing eligible never loads the model.
    study_id, revision : int
    decoder : GuardedDecoder, optional
        Decodes pixel data in a child under a memory limit (default: this process's,
        from the settings). The worker itself never decodes.

    Returns
    -------
    TriageOutcome
    """
    (outcome,) = triage_batch(
        session_factory, settings, classifier, study_id, revision, decoder=decoder
    )
    return outcome


def triage_batch(
    session_factory: sessionmaker[Session],
    settings: Settings,
    classifier: Classifier | Callable[[], Classifier],
    study_id: int,
    revision: int,
    *,
    batch_studies: int = 1,
    decoder: GuardedDecoder | None = None,
    on_outcome: Callable[[TriageOutcome], None] | None = None,
) -> list[TriageOutcome]:
    """Triage a study revision, and other revisions waiting, with one inference.

    Claims the revision (as :func:`triage_study`), then up to ``batch_studies - 1``
    other revisions that wait in ``queued`` (:func:`worklist.results.claim_waiting`),
    reads and decodes each, runs the classifier once on all their images, and scores,
    writes the SR of and records each revision on its own, as :func:`triage_study`
    does. The tasks of the other revisions find them left to this worker while it
    runs (``held``), or done. On an error that ends the task, the other revisions
    not recorded yet are given back (``queued``) for their own tasks.

    Parameters
    ----------
    session_factory, settings, classifier, study_id, revision, decoder
        As for :func:`triage_study`.
    batch_studies : int
        Most revisions triaged together (1: only this one).
    on_outcome : callable, optional
        Called with each outcome as soon as it is recorded (to send its SR while the
        batch goes on), before heatmaps and before the next revision.

    Returns
    -------
    list of TriageOutcome
        This revision's first, then the others'. When this revision is not claimed
        (done, stale, held), only its outcome, and nothing else is triaged.
    """
    with session_factory.begin() as session:
        claim = claim_revision(
            session,
            study_id=study_id,
            revision=revision,
            worker=worker_id(),
            leave=_left_to_its_batch(settings.lease_seconds),
        )
    if claim.status is not ClaimStatus.CLAIMED:
        if claim.status is ClaimStatus.DONE:
            log.info("study %s revision %s already triaged; not redone", study_id, revision)
            outcome = _done(session_factory, claim)
        else:
            log.info("study %s revision %s not triaged here: %s", study_id, revision, claim.detail)
            outcome = TriageOutcome(study_id, revision, claim.status)
        if on_outcome is not None:
            on_outcome(outcome)
        return [outcome]
    claims = [claim]
    if batch_studies > 1:
        with session_factory.begin() as session:
            claims += claim_waiting(
                session, worker=BATCH + worker_id(), limit=batch_studies - 1, exclude=study_id
            )
    decoder = decoder if decoder is not None else get_decoder(settings)
    done: set[int] = set()
    try:
        return _triage_claimed(
            session_factory, settings, classifier, claims, decoder, done, on_outcome
        )
    except BaseException:
        _give_back(session_factory, [c for c in claims[1:] if c.study_id not in done])
        raise


def _triage_claimed(
    session_factory: sessionmaker[Session],
    settings: Settings,
    classifier: Classifier | Callable[[], Classifier],
    claims: list[Claim],
    decoder: GuardedDecoder,
    done: set[int],
    on_outcome: Callable[[TriageOutcome], None] | None,
) -> list[TriageOutcome]:
    """Prepare every claimed revision, infer once, then score and record each (adding
    its study id to ``done``, then calling ``on_outcome``)."""
    loaded: list[Classifier] = []

    def model() -> Classifier:
        if not loaded:
            loaded.append(classifier if isinstance(classifier, Classifier) else classifier())
        return loaded[0]

    timings: list[dict[str, float]] = [{} for _ in claims]
    prepared = [
        _prepare(settings, model, claim, timing, decoder)
        for claim, timing in zip(claims, timings, strict=True)
    ]
    ready = [p for p in prepared if isinstance(p, _Prepared)]
    inferred = _infer(ready) if ready else []
    if len(claims) > 1:
        log.info(
            "batch of %d revisions, %d with images to score (%d images): inference %.0f ms",
            len(claims),
            len(ready),
            sum(len(p.scored) for p in ready),
            sum(seconds for _, _, seconds in inferred) * 1000,
        )
    results = iter(inferred)
    outcomes = []
    for claim, timing, item in zip(claims, timings, prepared, strict=True):
        if isinstance(item, _Prepared):
            logits, cams, seconds = next(results)
            timing["inference"] = seconds
            evaluation = _score(settings, item, logits, cams)
        else:
            evaluation = item
        started = claim.claimed_at or utcnow()
        outcome = _record(session_factory, settings, claim, started, evaluation, timing)
        done.add(claim.study_id)
        if on_outcome is not None:
            on_outcome(outcome)
        # After the result and its SR are recorded: a heatmap never delays either.
        score = evaluation.score
        if score is not None and score.decision.value == "abnormal":
            _write_heatmaps(settings, claim, evaluation, timing.get("inference", 0.0))
        outcomes.append(outcome)
    return outcomes


#: Prefix of the worker named in the claims a batch takes (:func:`triage_batch`).
BATCH = "batch@"


def _left_to_its_batch(lease_seconds: float) -> Callable[[str, datetime], bool]:
    """The ``leave`` rule of :func:`worklist.results.claim_revision` for a task's own
    revision: one that another worker claimed into its batch is left to that worker
    while it runs (a process of this machine) or, on another machine, for the lease
    (then the sweep sends it again). Any other claim is taken over, as after a crash."""

    def leave(claimed_by: str, claimed_at: datetime) -> bool:
        if not claimed_by.startswith(BATCH) or claimed_by == BATCH + worker_id():
            return False
        if (utcnow() - as_utc(claimed_at)).total_seconds() > lease_seconds:
            return False
        host, _, pid = claimed_by.removeprefix(BATCH).rpartition(":")
        if host != socket.gethostname():
            return True
        return pid.isdigit() and process_alive(int(pid))

    return leave


def _give_back(session_factory: sessionmaker[Session], claims: list[Claim]) -> None:
    """Release the claims of a batch's revisions that were not recorded (best effort:
    a claim not released is sent again by the sweep after the lease)."""
    for claim in claims:
        try:
            with session_factory.begin() as session:
                release_claim(session, study_id=claim.study_id, revision=claim.revision)
        except Exception as exc:  # noqa: BLE001 - the lease covers a release that failed
            log.warning(
                "study %s revision %s: claim not given back (%s); sent again after the lease",
                claim.study_id,
                claim.revision,
                exc,
            )


def _write_heatmaps(
    settings: Settings, claim: Claim, evaluation: StudyEvaluation, inference_seconds: float
) -> None:
    """Store the heatmap of each evaluated image of an abnormal study (best effort: a map
    that cannot be made or written is logged, never fails the triage): the model's
    class-activation map when its card declares one (made by the same run as the
    logits), else an occlusion map, skipped when the model is so slow here that the maps
    would take over :data:`HEATMAP_BUDGET_S` (each costs ``PATCHES_PER_SIDE ** 2``
    inferences)."""
    predict = evaluation.predict_logits
    if not evaluation.cams:
        if predict is None:
            return
        estimate = inference_seconds * PATCHES_PER_SIDE**2  # one map per image, as many runs
        if estimate > HEATMAP_BUDGET_S:
            log.info(
                "no heatmaps for study %s revision %s: about %.0f s on this machine"
                " (budget %.0f s)",
                claim.study_id,
                claim.revision,
                estimate,
                HEATMAP_BUDGET_S,
            )
            return
    for sop_uid, tensor, logit in evaluation.scored:
        path = heatmap_path(settings.data_dir, claim.study_instance_uid, claim.revision, sop_uid)
        cam = evaluation.cams.get(sop_uid)
        try:
            if cam is not None:
                save_heatmap(path, cam_heatmap(cam))
            elif predict is not None:
                save_heatmap(path, occlusion_map(predict, tensor, base_logit=logit))
        except (OSError, ValueError) as exc:
            log.warning(
                "no heatmap for an image of study %s revision %s: %s",
                claim.study_id,
                claim.revision,
                exc,
            )


@dataclass
class _Prepared:
    """A claimed revision whose images are read, selected and decoded, ready for the
    model: ``scored`` are those with a model input."""

    images: list[_Image]
    scored: list[_Image]
    classifier: Classifier


def _prepare(
    settings: Settings,
    model: Callable[[], Classifier],
    claim: Claim,
    timings: dict[str, float],
    decoder: GuardedDecoder,
) -> StudyEvaluation | _Prepared:
    """Read, select and decode the claimed revision's images (the model is loaded, by
    ``model()``, only when an image is eligible); an evaluation when there is nothing
    to score."""
    if claim.attempts > MAX_ATTEMPTS:
        return StudyEvaluation(
            TriageStatus.FAILED,
            reason=(
                f"gave up after {claim.attempts - 1} attempts without a result "
                "(worker lost or a permanent error; see the worker logs)"
            ),
            images=[],
        )

    t0 = time.perf_counter()
    images = [_read(ref.id, ref.sop_instance_uid, ref.file_path) for ref in claim.instances]
    timings["read"] = time.perf_counter() - t0
    data_dir = Path(settings.data_dir)
    t0 = time.perf_counter()
    _previews(images, decoder, data_dir)
    timings["previews"] = time.perf_counter() - t0
    eligible = [im for im in images if isinstance(im.selection, Eligible)]
    if not eligible:
        return StudyEvaluation(
            TriageStatus.NOT_EVALUATED, reason=_not_evaluated_reason(images), images=images
        )

    clf = model()
    spec = clf.card.preprocess_spec
    t0 = time.perf_counter()
    for image in eligible:
        _decode(image, spec, decoder, data_dir)
    timings["preprocess"] = time.perf_counter() - t0
    scored = [im for im in eligible if isinstance(im.selection, Eligible)]
    if not scored:
        return StudyEvaluation(
            TriageStatus.NOT_EVALUATED,
            reason=_not_evaluated_reason(images),
            images=images,
            card=clf.card,
            providers=clf.active_providers,
        )
    return _Prepared(images, scored, clf)


def _infer(ready: list[_Prepared]) -> list[tuple[np.ndarray, np.ndarray | None, float]]:
    """One classifier call on the images of every prepared revision.

    Returns, for each revision in order, its images' logits, their class-activation
    maps (None when the model has none) and its share of the call's seconds (by its
    number of images)."""
    clf = ready[0].classifier
    t0 = time.perf_counter()
    batch = np.stack([im.tensor for p in ready for im in p.scored if im.tensor is not None])
    batch = batch.astype(np.float32, copy=False)
    cams: np.ndarray | None = None
    if clf.has_cam:
        raw, cams = clf.predict_with_cam(batch)
    else:
        raw = clf.predict_logits(batch)
    logits = np.asarray(raw, dtype=np.float32).reshape(-1)
    seconds = time.perf_counter() - t0
    out = []
    start = 0
    for p in ready:
        stop = start + len(p.scored)
        share = seconds * len(p.scored) / len(logits)
        out.append((logits[start:stop], cams[start:stop] if cams is not None else None, share))
        start = stop
    return out


def _score(
    settings: Settings, prepared: _Prepared, logits: np.ndarray, cams: np.ndarray | None
) -> StudyEvaluation:
    """Score a prepared revision from its images' logits (and class-activation maps)."""
    clf, scored = prepared.classifier, prepared.scored
    card = clf.card
    # the card's point, or its population's by the patient's age (header)
    applied = applied_operating_point(card, settings.operating_point, [im.header for im in scored])
    study_score = score_study(
        logits,
        calibrate=card.calibrate,
        threshold=applied.threshold,
        operating_point=applied.label,
        how=settings.aggregation,
    )
    return StudyEvaluation(
        TriageStatus.TRIAGED,
        reason=None,
        images=prepared.images,
        card=card,
        providers=clf.active_providers,
        score=study_score,
        per_image={
            im.sop_instance_uid: (float(lg), p)
            for im, lg, p in zip(scored, logits, study_score.image_probabilities, strict=True)
        },
        evidence=[im.header for im in scored if im.header is not None],
        scored=[
            (im.sop_instance_uid, im.tensor, float(lg))
            for im, lg in zip(scored, logits, strict=True)
            if im.tensor is not None
        ],
        predict_logits=clf.predict_logits,
        cams=(
            {im.sop_instance_uid: cam for im, cam in zip(scored, cams, strict=True)}
            if cams is not None
            else {}
        ),
    )


def _previous_srs(session_factory: sessionmaker[Session], claim: Claim) -> list[Dataset]:
    """The SR of the latest earlier revision of the study, when its file is still there."""
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


def write_study_sr(
    session_factory: sessionmaker[Session],
    settings: Settings,
    claim: Claim,
    *,
    score: StudyScore,
    card: ModelCard,
    evidence: list[Dataset],
    content_datetime: datetime,
) -> WrittenSR:
    """Build the revision's SR and write it under ``data_dir/results``.

    The SR names the study's latest earlier SR, when its file is still there, as
    the one it supersedes.

    Parameters
    ----------
    session_factory : sessionmaker
        To find the earlier SR.
    settings : Settings
        ``data_dir`` and ``ae_title`` (the device name) are used.
    claim : Claim
        The revision.
    score : StudyScore
    card : ModelCard
        Gives the model's provenance.
    evidence : list of Dataset
        Headers of the images scored.
    content_datetime : datetime

    Returns
    -------
    WrittenSR

    Raises
    ------
    OSError
        When the file cannot be written.
    """
    series_uid, sop_uid = sr_uids(claim.study_instance_uid, claim.revision)
    population = intended_population(card.model_dump(mode="json"))
    warning = population_warning(population, age_years(str(evidence[0].get("PatientAge") or "")))
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
            manufacturer=card.manufacturer or "cxr-triage-node",
            device_name=settings.ae_title,
            content_datetime=content_datetime,
            intended_population=population.summary() if population else "",
            population_warning=warning or "",
        ),
        evidence,
        previous=_previous_srs(session_factory, claim),
    )
    path = write_sr(sr, Path(settings.data_dir) / "results")
    return WrittenSR(str(path), series_uid, sop_uid)


def result_record(
    settings: Settings,
    claim: Claim,
    evaluation: StudyEvaluation,
    *,
    priority: PriorityDecision,
    started: datetime,
    finished: datetime,
    sr: WrittenSR | None,
    objects: list[OutboxObject] | None = None,
) -> ResultRecord:
    """The row that records one revision's result, its images and its outbox rows.

    Parameters
    ----------
    settings : Settings
        ``operating_point``, ``aggregation`` and ``destinations`` are used.
    claim : Claim
    evaluation : StudyEvaluation
    priority : PriorityDecision
    started, finished : datetime
    sr : WrittenSR or None
        The SR written for the revision, if any.
    objects : list of OutboxObject, optional
        Written with the SR, sent after it (the heatmap Secondary Captures).

    Returns
    -------
    ResultRecord
    """
    score, card, per_image = evaluation.score, evaluation.card, evaluation.per_image
    image_records = []
    for im in evaluation.images:
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
    if score is not None:
        threshold: float | None = score.threshold
    else:
        threshold = card.threshold(settings.operating_point) if card is not None else None
    return ResultRecord(
        study_id=claim.study_id,
        revision=claim.revision,
        status=evaluation.status.value,
        reason=evaluation.reason,
        decision=score.decision.value if score else None,
        probability=score.probability if score else None,
        score=score.score if score else None,
        threshold=threshold,
        aggregation=settings.aggregation,
        operating_point=score.operating_point if score else settings.operating_point,
        model_name=card.name if card is not None else "",
        model_version=card.version if card is not None else "",
        model_sha256=card.sha256 if card is not None else "",
        model_manufacturer=card.manufacturer if card is not None else None,
        providers=",".join(evaluation.providers) if evaluation.providers else None,
        priority=int(priority.priority),
        priority_reason=priority.reason,
        queued_at=claim.queued_at,
        started_at=started,
        finished_at=finished,
        sr_sop_instance_uid=sr.sop_instance_uid if sr else None,
        sr_series_instance_uid=sr.series_instance_uid if sr else None,
        sr_path=sr.path if sr else None,
        images=image_records,
        destinations=[str(d) for d in settings.destinations],
        objects=tuple(objects or ()) if sr else (),
    )


def _heatmap_scs(
    settings: Settings, claim: Claim, evaluation: StudyEvaluation, finished: datetime
) -> list[OutboxObject]:
    """With ``heatmap_to_pacs``, the heatmap Secondary Captures of an abnormal study's
    evaluated images, written beside its SR to go through the outbox after it (only for
    a model with a class-activation map: an occlusion map is made after the result)."""
    score, card = evaluation.score, evaluation.card
    if not settings.heatmap_to_pacs or score is None or card is None:
        return []
    if score.decision.value != "abnormal":
        return []
    if not evaluation.cams:
        log.info(
            "no heatmap SC for study %s: model %s has no CAM output", claim.study_id, card.name
        )
        return []
    provenance = HeatmapProvenance(
        model_name=card.name,
        model_version=card.version,
        model_sha256=card.sha256,
        manufacturer=card.manufacturer or "cxr-triage-node",
        device_name=settings.ae_title,
        content_datetime=finished,
        keep_aspect=card.preprocess_spec.keep_aspect,
    )
    sources = [
        (im.instance_id, im.header, evaluation.cams[im.sop_instance_uid])
        for im in evaluation.images
        if im.header is not None and im.sop_instance_uid in evaluation.cams
    ]
    written = write_study_heatmap_scs(
        Path(settings.data_dir), sources, provenance, revision=claim.revision
    )
    return [OutboxObject(uid, str(path)) for uid, path in written]


def _record(
    session_factory: sessionmaker[Session],
    settings: Settings,
    claim: Claim,
    started: datetime,
    evaluation: StudyEvaluation,
    timings: dict[str, float],
) -> TriageOutcome:
    """Write the SR (triaged studies) and the heatmap SCs, then save the result with its
    outbox rows in one transaction."""
    score = evaluation.score
    finished = utcnow()
    priority = compute_priority(
        status=evaluation.status.value,
        decision=score.decision.value if score else None,
        probability=score.probability if score else None,
        requested_priority=claim.requested_priority,
        high_confidence=settings.high_confidence,
    )
    sr = None
    if (
        evaluation.status is TriageStatus.TRIAGED
        and score is not None
        and evaluation.card is not None
        and evaluation.evidence
    ):
        t0 = time.perf_counter()
        try:
            sr = write_study_sr(
                session_factory,
                settings,
                claim,
                score=score,
                card=evaluation.card,
                evidence=evaluation.evidence,
                content_datetime=finished,
            )
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
    objects = _heatmap_scs(settings, claim, evaluation, finished) if sr is not None else []
    record = result_record(
        settings,
        claim,
        evaluation,
        priority=priority,
        started=started,
        finished=finished,
        sr=sr,
        objects=objects,
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
        evaluation.status.value,
        f" {score.decision.value} p={score.probability:.3f}" if score else "",
        int(priority.priority),
        priority.reason,
        len(evaluation.images),
        len(evaluation.per_image),
        ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()),
    )
    return TriageOutcome(
        claim.study_id,
        claim.revision,
        ClaimStatus.CLAIMED,
        result_id=result_id,
        status=evaluation.status.value,
        decision=score.decision.value if score else None,
        deliveries=_pending_deliveries(session_factory, result_id),
        timings=timings,
    )
