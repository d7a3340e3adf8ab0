"""Labelled studies as a training dataset, in the form of ``shared/data/cxr/``.

:func:`export_dataset` writes ``labels.csv``
(``image,label,findings,patient_id,age,sex,view,source,split``), one 8-bit PNG per
image that triage evaluated in each study a radiologist labelled, and
``export.json`` (what was exported, when, and with which key fingerprint). It is
what ``triage-model train --labels DIR/labels.csv --images-root DIR`` reads.

- **Label**: the radiologist's, the latest feedback of the study.
- **Pseudonyms**: ``patient_id`` is ``site-`` and a keyed hash (HMAC-SHA-256 with
  ``TRIAGE_PSEUDONYM_KEY``) of the patient ID; file names are keyed hashes of the SOP
  Instance UIDs. No name, patient ID or UID is written; ages above 89 are written as
  90; only the sex and view codes are kept.
- **Splits** by patient, from the keyed hash (70 % train, 15 % val, 15 % test), so a
  patient stays in the same split in every export made with the same key.
- **Images**: the modality and VOI LUT applied, MONOCHROME1 inverted, 0.5-99.5
  percentile window, 8-bit, longest side at most ``max_side`` (the node's own display
  rendering).

The export is written to a temporary sibling directory and renamed into place, so a
refused or failed export leaves nothing behind; it is an audited admin action.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worklist import audit
from worklist.audit import Action, Actor
from worklist.core.clock import utcnow
from worklist.core.settings import Settings
from worklist.dicom_values import age_years, sex_group
from worklist.queries import labelled_studies_between
from worklist.tables import Instance, TriageImage, TriageResult

__all__ = [
    "COLUMNS",
    "ExportError",
    "LabelledImage",
    "export_dataset",
    "labelled_images",
    "pseudonym",
    "split_of",
]

log = logging.getLogger(__name__)

#: Columns of ``labels.csv`` (as ``shared/data/cxr/labels.csv``).
COLUMNS = ("image", "label", "findings", "patient_id", "age", "sex", "view", "source", "split")
#: Split shares by patient, in percent of the keyed hash space.
SPLITS = (("train", 70), ("val", 85), ("test", 100))


class ExportError(Exception):
    """The export cannot be made; nothing was written."""


def _key(settings: Settings) -> bytes:
    secret = settings.pseudonym_key
    text = secret.get_secret_value() if secret is not None else ""
    if not text:
        raise ExportError(
            "no pseudonymisation key: set TRIAGE_PSEUDONYM_KEY (a long random secret; keep "
            "it, since it fixes the pseudonyms and the splits) before exporting"
        )
    if len(text) < 16:
        raise ExportError("TRIAGE_PSEUDONYM_KEY is too short: use at least 16 characters")
    return text.encode()


def pseudonym(key: bytes, patient_id: str) -> str:
    """The pseudonym of a patient ID: ``site-`` and 16 hex digits of its HMAC-SHA-256.

    Parameters
    ----------
    key : bytes
    patient_id : str

    Returns
    -------
    str
    """
    digest = hmac.new(key, b"patient\0" + patient_id.encode(), hashlib.sha256).hexdigest()
    return f"site-{digest[:16]}"


def split_of(key: bytes, patient_pseudonym: str) -> str:
    """The split of a patient: ``train``, ``val`` or ``test``, fixed by the key.

    Parameters
    ----------
    key : bytes
    patient_pseudonym : str

    Returns
    -------
    str
    """
    digest = hmac.new(key, b"split\0" + patient_pseudonym.encode(), hashlib.sha256).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(name for name, upper in SPLITS if bucket < upper)


@dataclass(frozen=True)
class LabelledImage:
    """One evaluated image of a radiologist-labelled study (identifiers still in)."""

    study_id: int
    patient_key: str
    sop_instance_uid: str
    file_path: str
    label: str
    patient_age: str | None
    patient_sex: str | None
    view: str | None


def labelled_images(
    session: Session, *, since: datetime | None = None, until: datetime | None = None
) -> tuple[list[LabelledImage], int]:
    """The evaluated images of every labelled study received in ``[since, until)``.

    Parameters
    ----------
    session : Session
    since, until : datetime, optional
        On the study's first reception.

    Returns
    -------
    tuple
        The images, and the number of labelled studies without an evaluated image
        (left out).
    """
    out: list[LabelledImage] = []
    skipped = 0
    for study, label in labelled_studies_between(session, since=since, until=until):
        result_id = session.scalar(
            select(TriageResult.id)
            .where(TriageResult.study_id == study.id)
            .order_by(TriageResult.revision.desc())
            .limit(1)
        )
        rows = (
            session.execute(
                select(Instance)
                .join(TriageImage, TriageImage.instance_id == Instance.id)
                .where(TriageImage.result_id == result_id, TriageImage.evaluated.is_(True))
                .order_by(Instance.id)
            )
            .scalars()
            .all()
            if result_id is not None
            else []
        )
        if not rows:
            skipped += 1
            continue
        patient_key = study.patient_id or f"study:{study.study_instance_uid}"
        for inst in rows:
            out.append(
                LabelledImage(
                    study_id=study.id,
                    patient_key=patient_key,
                    sop_instance_uid=inst.sop_instance_uid,
                    file_path=inst.file_path,
                    label=str(label),
                    patient_age=inst.patient_age or study.patient_age,
                    patient_sex=inst.patient_sex or study.patient_sex,
                    view=inst.view_position,
                )
            )
    return out, skipped


def _age_text(patient_age: str | None) -> str:
    years = age_years(patient_age)
    if years is None:
        return ""
    return str(min(int(years), 90))


class ExportImageError(Exception):
    """One image of a labelled study cannot be rendered for the export."""


def _render_png(path: str | Path, *, size: int, max_pixels: int) -> bytes:
    """Render one spooled image as a PNG for the export, after the frame check.

    Only images the worker evaluated are exported, so they passed its guarded decode
    once; the frame header is checked against the pixel budget again before decoding
    here all the same.
    """
    from models.frame_headers import FrameHeaderError, check_frame
    from worklist.thumbnails import png_from_dataset

    try:
        ds = pydicom.dcmread(path, force=True)
        check_frame(ds, max_pixels=max_pixels)
        return png_from_dataset(ds, size=size)
    except FrameHeaderError as exc:
        raise ExportImageError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - unreadable file or undecodable pixels
        raise ExportImageError(f"cannot decode pixels: {type(exc).__name__}") from exc


def export_dataset(
    session_factory: sessionmaker[Session],
    *,
    out_dir: str | Path,
    settings: Settings,
    actor: Actor,
    since: datetime | None = None,
    until: datetime | None = None,
    max_side: int = 1024,
) -> dict[str, Any]:
    """Write the labelled studies as ``labels.csv`` and PNG images; audited.

    The database is read in one short transaction and the audit row written in
    another: rendering the images, which takes minutes at full size, holds no lock
    (on SQLite a transaction would block ingest and the workers).

    Parameters
    ----------
    session_factory : sessionmaker
    out_dir : str or Path
        A directory that does not exist yet or is empty.
    settings : Settings
        ``pseudonym_key`` and ``ae_title`` are used.
    actor : Actor
    since, until : datetime, optional
        Studies first received in ``[since, until)``.
    max_side : int
        Longest image side in pixels.

    Returns
    -------
    dict
        The manifest written to ``export.json``.

    Raises
    ------
    ExportError
        No key, the output directory is not empty, or there is no labelled study with an
        evaluated image. Nothing is written then.
    """
    key = _key(settings)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory")
    with session_factory() as session:
        images, skipped = labelled_images(session, since=since, until=until)
    if not images:
        raise ExportError(
            "no labelled study to export"
            + (" in that period" if since or until else "")
            + ": radiologists label studies with their feedback (agree/disagree and label)"
            + (f"; {skipped} labelled studies had no evaluated image" if skipped else "")
        )
    export_id = uuid.uuid4().hex
    source = f"site:{settings.ae_title}"
    tmp = out.with_name(f".{out.name}.{export_id[:8]}.tmp")
    (tmp / "images").mkdir(parents=True)
    rows: list[dict[str, str]] = []
    unreadable = 0
    try:
        for item in images:
            name = hmac.new(key, b"image\0" + item.sop_instance_uid.encode(), hashlib.sha256)
            rel = f"images/{name.hexdigest()[:24]}.png"
            try:
                png = _render_png(
                    item.file_path, size=max_side, max_pixels=settings.max_image_pixels
                )
            except ExportImageError as exc:
                unreadable += 1
                log.warning("export: an image of study %s left out: %s", item.study_id, exc)
                continue
            (tmp / rel).write_bytes(png)
            who = pseudonym(key, item.patient_key)
            sex = sex_group(item.patient_sex)
            rows.append(
                {
                    "image": rel,
                    "label": item.label,
                    "findings": f"radiologist:{item.label}",
                    "patient_id": who,
                    "age": _age_text(item.patient_age),
                    "sex": "" if sex == "unknown" else sex,
                    "view": (item.view or "").strip().upper(),
                    "source": source,
                    "split": split_of(key, who),
                }
            )
        if not rows:
            raise ExportError("no image of the labelled studies could be read from the spool")
        with (tmp / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        counts = {
            split: {
                label: sum(1 for r in rows if r["split"] == split and r["label"] == label)
                for label in ("normal", "abnormal")
            }
            for split, _ in SPLITS
        }
        manifest = {
            "export_id": export_id,
            "exported_at": utcnow().isoformat(),
            "source": source,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "studies": len({i.study_id for i in images}),
            "images": len(rows),
            "patients": len({r["patient_id"] for r in rows}),
            "counts": counts,
            "left_out": {
                "studies_without_evaluated_image": skipped,
                "unreadable_images": unreadable,
            },
            "key_fingerprint": hmac.new(key, b"fingerprint", hashlib.sha256).hexdigest()[:12],
            "labels": "radiologist feedback (latest per study)",
        }
        (tmp / "export.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with session_factory.begin() as session:
        audit.record(
            session,
            actor=actor,
            action=Action.DATASET_EXPORT,
            detail={
                "export_id": export_id,
                "out": str(out.resolve()),
                "images": manifest["images"],
                "studies": manifest["studies"],
                "since": manifest["since"],
                "until": manifest["until"],
            },
        )
    return manifest
