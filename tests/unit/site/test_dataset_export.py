"""``dataset export``: labelled studies to labels.csv + images, pseudonymised, split by
patient stably, audited; clear errors that write nothing."""

from __future__ import annotations

import csv
import json
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import select

from worklist.dataset_export import COLUMNS, ExportError, export_dataset, pseudonym, split_of
from worklist.tables import AuditEvent, Instance, Study


def _export(session_factory, settings, actor, out: Path, **kw):  # type: ignore[no-untyped-def]
    return export_dataset(session_factory, out_dir=out, settings=settings, actor=actor, **kw)


def test_export_writes_the_labelled_studies_only(
    site, session_factory, site_settings, actor, tiny_classifier, tmp_path: Path
) -> None:
    for i in range(12):
        site.study(
            label="abnormal" if i % 2 else "normal",
            classifier=tiny_classifier,
            patient_id=f"MRN{i // 2:05d}",  # two studies per patient
            sex="M" if i % 3 else "F",
            age="095Y" if i == 0 else "040Y",
            view="AP" if i % 4 == 0 else "PA",
        )
    site.study(label=None, classifier=tiny_classifier)  # not labelled: not exported
    out = tmp_path / "export1"
    manifest = _export(session_factory, site_settings, actor, out)
    assert manifest["studies"] == 12 and manifest["images"] == 12 and manifest["patients"] == 6

    with (out / "labels.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    assert len(rows) == 12
    assert {r["label"] for r in rows} == {"normal", "abnormal"}
    assert {r["sex"] for r in rows} == {"F", "M"} and {r["view"] for r in rows} == {"AP", "PA"}
    assert sorted({r["age"] for r in rows}) == ["40", "90"]  # above 89 written as 90
    # One split per patient, and the same as the keyed hash says.
    key = b"0123456789abcdef-test-key"
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
        assert r["split"] == split_of(key, r["patient_id"])
        assert (out / r["image"]).is_file()
    assert all(len(s) == 1 for s in by_patient.values()) and len(by_patient) == 6
    assert pseudonym(key, "MRN00000") in by_patient

    # No name, patient ID or UID anywhere in what was written.
    with session_factory() as s:
        secrets = {st.patient_id for st in s.scalars(select(Study))}
        secrets |= {st.patient_name for st in s.scalars(select(Study))}
        secrets |= {st.study_instance_uid for st in s.scalars(select(Study))}
        secrets |= {i.sop_instance_uid for i in s.scalars(select(Instance))}
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, (path.name, "identifier written")

    # Stable across exports: the same patients in the same splits.
    out2 = tmp_path / "export2"
    _export(session_factory, site_settings, actor, out2)
    rows2 = list(csv.DictReader((out2 / "labels.csv").open(newline="")))
    assert {(r["patient_id"], r["split"]) for r in rows2} == {
        (r["patient_id"], r["split"]) for r in rows
    }
    with session_factory() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "dataset_export")).all()
    assert len(events) == 2 and json.loads(events[0].detail)["images"] == 12


def test_export_reads_back_as_a_training_labels_file(
    site, session_factory, site_settings, actor, tiny_classifier, tmp_path: Path
) -> None:
    from models.data import read_labels
    from models.preprocess import PreprocessSpec, preprocess_file

    for i in range(4):
        site.study(label="abnormal" if i % 2 else "normal", classifier=tiny_classifier)
    out = tmp_path / "ds"
    _export(session_factory, site_settings, actor, out)
    records = read_labels(out / "labels.csv")
    assert [r.label for r in records] == [0, 1, 0, 1]
    x = preprocess_file(out / records[0].image, PreprocessSpec(input_size=64))
    assert x.shape == (1, 64, 64)


def test_export_refuses_without_key_or_labels_and_writes_nothing(
    site, session_factory, site_settings, actor, tiny_classifier, tmp_path: Path
) -> None:
    site.study(label=None, classifier=tiny_classifier)
    out = tmp_path / "nothing"
    with pytest.raises(ExportError, match="no labelled study"):
        _export(session_factory, site_settings, actor, out)
    no_key = site_settings.model_copy(
        update={"pseudonym_key": type(site_settings.pseudonym_key)("")}
    )
    with pytest.raises(ExportError, match="TRIAGE_PSEUDONYM_KEY"):
        _export(session_factory, no_key, actor, out)
    study = site.study(label="normal", classifier=tiny_classifier)
    assert study
    (out).mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="not an empty directory"):
        _export(session_factory, site_settings, actor, out)
    from datetime import datetime

    with pytest.raises(ExportError, match="in that period"):
        _export(
            session_factory,
            site_settings,
            actor,
            tmp_path / "later",
            since=datetime(2100, 1, 1, tzinfo=UTC),
        )
    assert sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith((".", "later", "nothing"))
    ) == ["nothing"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with session_factory() as s:
        assert not s.scalars(select(AuditEvent).where(AuditEvent.action == "dataset_export")).all()
