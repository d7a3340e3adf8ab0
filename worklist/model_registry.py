"""The model registry: the models the node manages, and which one decides.

One model is the *champion*: it decides the priority and writes the SR. Any number
of *shadow* models score every new study beside it (:mod:`triage.shadow`); their
scores are stored, never sent and never shown as the decision. A promotion makes a
shadow (or retired) model the champion and the old champion a shadow; a rollback
undoes the latest promotion that is not undone yet. Every change is an audited
admin action, in the same transaction as the change.

Workers read the registry before each task (:func:`active_models`) and load the
champion again when its weights hash differs from the loaded one, so a promotion
reaches every worker without a restart. With an empty registry the configured
model (``TRIAGE_MODEL_PATH``, else the shipped default) is registered as champion
the first time a worker or the CLI asks (:func:`ensure_champion`).

Registering a model copies its file into ``DATA_DIR/models/`` (shared by the
workers like the spool), so the registry never points at a file someone may move.
A model is refused, and nothing changes, when its card lacks operating points or the
configured one, or when an input of the card's preprocessing size cannot be fed to it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from worklist import audit
from worklist.audit import Action, Actor, Outcome
from worklist.core.clock import utcnow
from worklist.tables import ModelEntry, ModelPromotion, ModelRole

__all__ = [
    "SYSTEM_ACTOR",
    "ActiveModel",
    "PreparedModel",
    "PromotionRefused",
    "RegistryError",
    "active_models",
    "add_model",
    "champion_card",
    "check_model_file",
    "ensure_champion",
    "file_sha256",
    "get_model",
    "list_models",
    "prepare_model",
    "promote",
    "record_refusal",
    "refresh_champion_copy",
    "rollback",
]

log = logging.getLogger(__name__)

#: The actor of automatic registrations (the configured model at first start).
SYSTEM_ACTOR = Actor(
    user_id=None, username="system", role="admin", auth_method="system", client_ip=None
)

#: A safety rule: ``(session, champion, challenger) -> reasons to refuse`` (empty: allowed).
SafetyRule = Callable[[Session, "ModelEntry", "ModelEntry"], Sequence[str]]


class RegistryError(Exception):
    """A registry action that cannot be done; nothing was changed."""


class PromotionRefused(RegistryError):
    """The safety rule refuses the promotion (force it with a reason to override).

    Attributes
    ----------
    violations : list of str
    """

    def __init__(self, name: str, violations: Sequence[str]) -> None:
        self.violations = list(violations)
        super().__init__(
            f"promotion of {name!r} refused by the safety rule: "
            + "; ".join(self.violations)
            + " (use --force --reason TEXT to promote anyway; the reason is audited)"
        )


@dataclass(frozen=True)
class ActiveModel:
    """What a worker needs to load a registered model.

    Attributes
    ----------
    id : int
    name, version, sha256, path, role : str
    """

    id: int
    name: str
    version: str
    sha256: str
    path: str
    role: str

    @classmethod
    def of(cls, entry: ModelEntry) -> ActiveModel:
        """The :class:`ActiveModel` of a registry row."""
        return cls(entry.id, entry.name, entry.version, entry.sha256, entry.path, entry.role)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_file(path: str | Path, *, operating_point: str) -> Any:
    """Check that the node can run a model file; return its card.

    The card must be readable, carry operating points (the configured one among
    them) and a weights hash, and the model must accept a batch of the shape its
    card's preprocessing produces and answer one logit per image.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    operating_point : str
        The node's configured operating point (``TRIAGE_OPERATING_POINT``).

    Returns
    -------
    models.card.ModelCard

    Raises
    ------
    RegistryError
        With what is wrong.
    """
    import numpy as np

    from models.runtime import Classifier, ModelLoadError

    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"model file not found: {path}")
    try:
        clf = Classifier.load(path, ["CPUExecutionProvider"], max_batch=2)
    except ModelLoadError as exc:
        raise RegistryError(f"cannot load {path.name}: {exc}") from None
    card = clf.card
    if not card.operating_points:
        raise RegistryError(
            f"{path.name}: the model card has no operating points; calibrate it first "
            "(triage-model calibrate MODEL --labels ... --images-root ...)"
        )
    if operating_point not in card.operating_points:
        raise RegistryError(
            f"{path.name}: the model card has no operating point {operating_point!r} "
            f"(TRIAGE_OPERATING_POINT); it has {sorted(card.operating_points)}"
        )
    if not card.sha256:
        raise RegistryError(f"{path.name}: the model card has no weights sha256")
    shape = tuple(card.preprocess_spec.shape)
    try:
        logits = clf.predict_logits(np.zeros((2, *shape), np.float32))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise RegistryError(
            f"{path.name}: the pipeline feeds images of shape {shape} (the card's "
            f"preprocessing) and the model does not accept them: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if np.asarray(logits).shape != (2,):
        raise RegistryError(
            f"{path.name}: expected one logit per image, got shape {np.asarray(logits).shape}"
        )
    return card


@dataclass(frozen=True)
class PreparedModel:
    """A checked model file copied into the registry's directory, not registered yet.

    Attributes
    ----------
    card : models.card.ModelCard
    path : pathlib.Path
        The registry's copy.
    file_sha256 : str
    """

    card: Any
    path: Path
    file_sha256: str


def prepare_model(
    path: str | Path, *, models_dir: str | Path, operating_point: str
) -> PreparedModel:
    """Check a model file and copy it into ``models_dir``, outside any transaction.

    Loading a model and running it once can take seconds (large models): done here,
    before :func:`add_model`'s short transaction, no database lock is held meanwhile.

    Parameters
    ----------
    path : str or Path
    models_dir : str or Path
    operating_point : str

    Returns
    -------
    PreparedModel

    Raises
    ------
    RegistryError
        See :func:`check_model_file`.
    """
    card = check_model_file(path, operating_point=operating_point)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{card.sha256[:16]}.onnx"
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(target)
    return PreparedModel(card, target.resolve(), file_sha256(target))


def get_model(session: Session, *, name: str) -> ModelEntry | None:
    """The registered model of that name, or None."""
    return session.scalar(select(ModelEntry).where(ModelEntry.name == name))


def list_models(session: Session) -> list[ModelEntry]:
    """Every registered model, champion first, then shadows, then retired, oldest first."""
    order = {ModelRole.CHAMPION.value: 0, ModelRole.SHADOW.value: 1, ModelRole.RETIRED.value: 2}
    rows = list(session.scalars(select(ModelEntry).order_by(ModelEntry.id)))
    return sorted(rows, key=lambda m: (order.get(m.role, 3), m.id))


def active_models(session: Session) -> tuple[ActiveModel | None, list[ActiveModel]]:
    """The champion (None with an empty registry) and the shadow models.

    Parameters
    ----------
    session : Session

    Returns
    -------
    tuple
        ``(champion, shadows)``.
    """
    rows = session.scalars(
        select(ModelEntry)
        .where(ModelEntry.role.in_([ModelRole.CHAMPION.value, ModelRole.SHADOW.value]))
        .order_by(ModelEntry.id)
    )
    champion: ActiveModel | None = None
    shadows: list[ActiveModel] = []
    for row in rows:
        if row.role == ModelRole.CHAMPION.value:
            champion = ActiveModel.of(row)
        else:
            shadows.append(ActiveModel.of(row))
    return champion, shadows


def champion_card(session: Session) -> dict[str, Any] | None:
    """The champion's model card (as registered), or None with an empty registry.

    Parameters
    ----------
    session : Session

    Returns
    -------
    dict or None
    """
    import json

    text = session.scalar(
        select(ModelEntry.card).where(ModelEntry.role == ModelRole.CHAMPION.value)
    )
    return json.loads(text) if text else None


def _champion_row(session: Session) -> ModelEntry | None:
    return session.scalar(select(ModelEntry).where(ModelEntry.role == ModelRole.CHAMPION.value))


def add_model(
    session: Session,
    *,
    actor: Actor,
    path: str | Path | None = None,
    models_dir: str | Path | None = None,
    operating_point: str | None = None,
    prepared: PreparedModel | None = None,
    shadow: bool = False,
    name: str | None = None,
) -> ModelEntry:
    """Register a model file (checked, copied into ``models_dir``); audited.

    The first model of an empty registry becomes the champion unless ``shadow``;
    otherwise a model is registered as a shadow (``shadow``) or retired (scores
    nothing until promoted).

    Parameters
    ----------
    session : Session
    actor : Actor
    path : str or Path, optional
        The ``.onnx`` file with its card (checked and copied here, inside the
        caller's transaction; give ``prepared`` instead to do that before).
    models_dir : str or Path, optional
        Where the registry keeps its copies (``DATA_DIR/models``).
    operating_point : str, optional
        The configured operating point; the card must have it.
    prepared : PreparedModel, optional
        What :func:`prepare_model` returned.
    shadow : bool
        Score every new study in shadow.
    name : str, optional
        Registry name (default: the card's ``name``, with ``-<version>`` added when
        that is taken).

    Returns
    -------
    ModelEntry

    Raises
    ------
    RegistryError
        Bad model, or the name or weights are registered already.
    """
    if prepared is None:
        if path is None or models_dir is None or operating_point is None:
            raise RegistryError("add_model needs a prepared model or path, models_dir and point")
        prepared = prepare_model(path, models_dir=models_dir, operating_point=operating_point)
    card = prepared.card
    known = session.scalar(select(ModelEntry).where(ModelEntry.sha256 == card.sha256))
    if known is not None:
        raise RegistryError(
            f"these weights (sha256 {card.sha256[:12]}) are registered already as {known.name!r}"
        )
    if name is None:
        name = card.name
        if get_model(session, name=name) is not None:
            name = f"{card.name}-{card.version}"
    if get_model(session, name=name) is not None:
        raise RegistryError(f"a model named {name!r} is registered already; choose --name")
    now = utcnow()
    first = _champion_row(session) is None and not shadow
    entry = ModelEntry(
        name=name,
        version=card.version,
        sha256=card.sha256,
        file_sha256=prepared.file_sha256,
        path=str(prepared.path),
        card=card.to_json(),
        role=(
            ModelRole.CHAMPION.value
            if first
            else ModelRole.SHADOW.value
            if shadow
            else ModelRole.RETIRED.value
        ),
        added_at=now,
        promoted_at=now if first else None,
    )
    session.add(entry)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=Action.MODEL_ADD,
        detail={"model": name, "sha256": card.sha256, "role": entry.role},
    )
    log.info(
        "model %s %s (sha256 %s) registered as %s", name, card.version, card.sha256[:12], entry.role
    )
    return entry


def ensure_champion(
    session_factory: sessionmaker[Session],
    *,
    path: str | Path,
    models_dir: str | Path,
    operating_point: str,
) -> ActiveModel:
    """The champion, registering ``path`` as champion when the registry has none.

    The model is checked and copied outside any transaction (:func:`prepare_model`), then
    registered in a short one. Two workers starting at once may both try: the loser's
    insert fails on the unique weights hash and it reads the winner's row.

    Parameters
    ----------
    session_factory : sessionmaker
    path : str or Path
        The configured model (``TRIAGE_MODEL_PATH`` or the shipped default).
    models_dir : str or Path
    operating_point : str

    Returns
    -------
    ActiveModel
    """
    with session_factory() as session:
        row = _champion_row(session)
        if row is not None:
            return ActiveModel.of(row)
    prepared = prepare_model(path, models_dir=models_dir, operating_point=operating_point)
    try:
        with session_factory.begin() as session:
            row = _champion_row(session)
            if row is not None:
                return ActiveModel.of(row)
            known = session.scalar(
                select(ModelEntry).where(ModelEntry.sha256 == prepared.card.sha256)
            )
            if known is not None:  # registered before, then every champion retired
                known.role = ModelRole.CHAMPION.value
                known.promoted_at = utcnow()
                return ActiveModel.of(known)
            entry = add_model(session, prepared=prepared, actor=SYSTEM_ACTOR)
            return ActiveModel.of(entry)
    except IntegrityError:
        with session_factory() as session:
            row = _champion_row(session)
            if row is None:
                raise
            return ActiveModel.of(row)


def refresh_champion_copy(
    session_factory: sessionmaker[Session], *, path: str | Path, operating_point: str
) -> bool:
    """Replace the registry's copy of the champion by the configured file when that file
    is the same model exported anew.

    A release of the node can ship its default model with a new graph output (the
    ``cam`` map of the heatmaps) and nothing else changed. The registry keeps the
    copy it made at registration, so an upgraded node would never use it. The copy
    is replaced only when the configured file has the champion's weights hash, its
    card is the champion's but for ``outputs``, and it keeps every output the copy
    has: nothing that decides (weights, calibration, thresholds) changes, so no
    promotion is needed. Anything else is a new model, for ``triage-node model add``.

    Parameters
    ----------
    session_factory : sessionmaker
    path : str or Path
        The configured model (``TRIAGE_MODEL_PATH`` or the shipped default).
    operating_point : str

    Returns
    -------
    bool
        Whether the copy was replaced.

    Raises
    ------
    RegistryError
        When the configured file qualifies but cannot be run (:func:`check_model_file`).
    """
    from models.card import read_card

    path = Path(path)
    with session_factory() as session:
        row = _champion_row(session)
        if row is None or not path.is_file() or file_sha256(path) == row.file_sha256:
            return False
        champion_id, registered = row.id, Path(row.path)
        weights, name = row.sha256, row.name
    new_card = read_card(path)
    if new_card.sha256 != weights or not registered.is_file():
        return False
    new, old = new_card.model_dump(mode="json"), read_card(registered).model_dump(mode="json")
    new_outputs, old_outputs = new.pop("outputs", None) or {}, old.pop("outputs", None) or {}
    if not set(old_outputs) <= set(new_outputs):
        return False
    if new != old:
        log.info(
            "the configured model has the champion %s's weights but another card; the "
            "registry keeps its copy (register the file with triage-node model add)",
            name,
        )
        return False
    check_model_file(path, operating_point=operating_point)
    tmp = registered.with_name(registered.name + ".tmp")
    shutil.copyfile(path, tmp)
    tmp.replace(registered)
    with session_factory.begin() as session:
        entry = session.get(ModelEntry, champion_id)
        if entry is not None:
            entry.file_sha256 = file_sha256(registered)
    log.info(
        "registry copy of the champion %s replaced by the configured file: same weights "
        "and card, outputs now %s",
        name,
        sorted(new_outputs),
    )
    return True


def promote(
    session: Session,
    *,
    name: str,
    actor: Actor,
    safety: SafetyRule | None = None,
    force: bool = False,
    reason: str | None = None,
) -> ModelPromotion:
    """Make ``name`` the champion; the old champion becomes a shadow. Audited.

    Parameters
    ----------
    session : Session
    name : str
        A registered model.
    actor : Actor
    safety : callable, optional
        The safety rule (:func:`worklist.model_safety.promotion_violations`); its
        reasons refuse the promotion unless ``force``.
    force : bool
        Promote despite the safety rule; needs ``reason``.
    reason : str, optional
        Why (written to the audit log).

    Returns
    -------
    ModelPromotion

    Raises
    ------
    RegistryError
        Unknown name, already champion, or ``force`` without a reason.
    PromotionRefused
        The safety rule refuses and ``force`` is not given (nothing changed).
    """
    entry = get_model(session, name=name)
    if entry is None:
        known = ", ".join(m.name for m in list_models(session)) or "none"
        raise RegistryError(f"no model named {name!r} is registered (known: {known})")
    current = _champion_row(session)
    if current is not None and current.id == entry.id:
        raise RegistryError(f"{name!r} is the champion already")
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason TEXT (it goes into the audit log)")
    violations = list(safety(session, current, entry)) if safety and current is not None else []
    if violations and not force:
        raise PromotionRefused(name, violations)
    now = utcnow()
    if current is not None:
        current.role = ModelRole.SHADOW.value
    entry.role = ModelRole.CHAMPION.value
    entry.promoted_at = now
    entry.retired_at = None
    promotion = ModelPromotion(
        model_id=entry.id,
        previous_model_id=current.id if current is not None else None,
        at=now,
        username=actor.username,
        forced=bool(violations) and force,
        reason=reason,
    )
    session.add(promotion)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=Action.MODEL_PROMOTE,
        detail={
            "model": entry.name,
            "sha256": entry.sha256,
            "previous": current.name if current is not None else None,
            "forced": promotion.forced,
            "violations": violations,
            "reason": reason,
        },
    )
    log.info(
        "model %s promoted to champion (was %s)", entry.name, current.name if current else None
    )
    return promotion


def record_refusal(session: Session, *, actor: Actor, name: str, error: RegistryError) -> None:
    """Audit a refused promotion (its own transaction is the caller's).

    Parameters
    ----------
    session : Session
    actor : Actor
    name : str
    error : RegistryError
    """
    audit.record(
        session,
        actor=actor,
        action=Action.MODEL_PROMOTE,
        outcome=Outcome.DENIED,
        detail={"model": name, "why": str(error)[:700]},
    )


def rollback(session: Session, *, actor: Actor) -> ModelPromotion:
    """Undo the latest promotion not undone yet: its previous champion decides again.

    The model it had promoted becomes a shadow. Audited.

    Parameters
    ----------
    session : Session
    actor : Actor

    Returns
    -------
    ModelPromotion
        The promotion that was undone.

    Raises
    ------
    RegistryError
        When there is no promotion to undo.
    """
    current = _champion_row(session)
    promotion = session.scalar(
        select(ModelPromotion)
        .where(ModelPromotion.rolled_back_at.is_(None))
        .order_by(ModelPromotion.id.desc())
        .limit(1)
    )
    if promotion is None or promotion.previous_model_id is None:
        raise RegistryError("nothing to roll back: no promotion since the first champion")
    if current is None or promotion.model_id != current.id:
        raise RegistryError("the latest promotion's model is not the champion; promote by name")
    previous = session.get(ModelEntry, promotion.previous_model_id)
    if previous is None:  # pragma: no cover - the foreign key keeps it
        raise RegistryError("the previous champion is missing from the registry")
    now = utcnow()
    current.role = ModelRole.SHADOW.value
    previous.role = ModelRole.CHAMPION.value
    previous.promoted_at = now
    promotion.rolled_back_at = now
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=Action.MODEL_ROLLBACK,
        detail={"from": current.name, "to": previous.name, "sha256": previous.sha256},
    )
    log.info("rollback: model %s is champion again (was %s)", previous.name, current.name)
    return promotion
