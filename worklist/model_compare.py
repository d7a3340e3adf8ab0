"""``triage-node model compare``: the registry's champion against each shadow model on
the studies radiologists labelled.

For each study with a radiologist's label (the latest feedback) received in
``[since, until)``, each model's probability comes from the latest revision it scored:
the champion's result (``triage_results``, when that model was the champion then) or
its shadow score (``shadow_results``). Only the studies both models scored are
compared (paired), with :func:`models.compare.compare_models`, overall and per age
band (:data:`models.demographics.AGE_BANDS`), sex and view.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.compare import ModelScores, compare_models
from worklist.dicom_values import patient_age_band, sex_group
from worklist.queries import labelled_studies_between
from worklist.tables import (
    Instance,
    ModelEntry,
    ModelRole,
    ShadowResult,
    TriageImage,
    TriageResult,
    TriageStatus,
)

__all__ = [
    "ComparisonInputs",
    "LabelledStudy",
    "compare_inputs",
    "compare_pair",
    "compare_registered",
    "comparison_inputs",
    "format_comparison",
    "labelled_studies",
]


@dataclass
class LabelledStudy:
    """A labelled study and every model's probability on it (by weights hash)."""

    study_id: int
    label: int
    age_band: str
    sex: str
    view: str
    probabilities: dict[str, float]


def labelled_studies(
    session: Session, *, since: datetime | None = None, until: datetime | None = None
) -> list[LabelledStudy]:
    """The radiologist-labelled studies with each model's latest probability.

    Parameters
    ----------
    session : Session
    since, until : datetime, optional
        On the study's first reception.

    Returns
    -------
    list of LabelledStudy
    """
    out: list[LabelledStudy] = []
    for study, label in labelled_studies_between(session, since=since, until=until):
        probabilities: dict[str, float] = {}
        results = session.scalars(
            select(TriageResult)
            .where(
                TriageResult.study_id == study.id,
                TriageResult.status == TriageStatus.TRIAGED.value,
            )
            .order_by(TriageResult.revision)
        ).all()
        for result in results:  # later revisions overwrite earlier ones
            if result.probability is not None:
                probabilities[result.model_sha256] = float(result.probability)
        for shadow in session.scalars(
            select(ShadowResult)
            .where(ShadowResult.study_id == study.id)
            .order_by(ShadowResult.revision, ShadowResult.id)
        ):
            probabilities[shadow.model_sha256] = float(shadow.probability)
        view = None
        if results:
            view = session.scalar(
                select(Instance.view_position)
                .join(TriageImage, TriageImage.instance_id == Instance.id)
                .where(TriageImage.result_id == results[-1].id, TriageImage.evaluated.is_(True))
                .limit(1)
            )
        out.append(
            LabelledStudy(
                study_id=study.id,
                label=1 if label == "abnormal" else 0,
                age_band=patient_age_band(study.patient_age),
                sex=sex_group(study.patient_sex),
                view=(view or "").strip().upper() or "unknown",
                probabilities=probabilities,
            )
        )
    return out


def _thresholds(entry: ModelEntry) -> dict[str, float]:
    card = json.loads(entry.card)
    return {k: float(v["threshold"]) for k, v in (card.get("operating_points") or {}).items()}


def compare_pair(
    studies: list[LabelledStudy],
    champion: ModelEntry,
    challenger: ModelEntry,
    *,
    operating_point: str,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Compare two registered models on the labelled studies both scored.

    Parameters
    ----------
    studies : list of LabelledStudy
    champion, challenger : ModelEntry
    operating_point : str
        The one the node applies.
    n_boot : int

    Returns
    -------
    dict
        :func:`models.compare.compare_models`'s report (``overall.n`` is 0 when no
        study was scored by both).
    """
    both = [
        s
        for s in studies
        if champion.sha256 in s.probabilities and challenger.sha256 in s.probabilities
    ]
    y = np.array([s.label for s in both], dtype=int)
    report = compare_models(
        y,
        ModelScores(
            champion.name,
            np.array([s.probabilities[champion.sha256] for s in both], dtype=float),
            _thresholds(champion),
        ),
        ModelScores(
            challenger.name,
            np.array([s.probabilities[challenger.sha256] for s in both], dtype=float),
            _thresholds(challenger),
        ),
        applied=operating_point,
        groups={
            "age_band": [s.age_band for s in both],
            "sex": [s.sex for s in both],
            "view": [s.view for s in both],
        },
        n_boot=n_boot,
    )
    report["labelled_studies"] = len(studies)
    return report


@dataclass
class ComparisonInputs:
    """What a comparison reads from the database (usable after the session closed)."""

    champion: ModelEntry | None
    challengers: list[ModelEntry]
    studies: list[LabelledStudy]
    since: datetime | None = None
    until: datetime | None = None


def comparison_inputs(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    challengers: list[str] | None = None,
) -> ComparisonInputs:
    """Read the champion, the challengers and the labelled studies.

    Parameters
    ----------
    session : Session
    since, until : datetime, optional
    challengers : list of str, optional
        Registry names (default: every shadow model).

    Returns
    -------
    ComparisonInputs
    """
    rows = session.scalars(select(ModelEntry).order_by(ModelEntry.id)).all()
    champion = next((m for m in rows if m.role == ModelRole.CHAMPION.value), None)
    if challengers is None:
        others = [m for m in rows if m.role == ModelRole.SHADOW.value]
    else:
        others = [m for m in rows if m.name in challengers]
    studies = labelled_studies(session, since=since, until=until)
    return ComparisonInputs(champion, others, studies, since, until)


def compare_inputs(
    inputs: ComparisonInputs, *, operating_point: str, n_boot: int = 1000
) -> dict[str, Any]:
    """The champion against each challenger (no database access).

    Parameters
    ----------
    inputs : ComparisonInputs
    operating_point : str
    n_boot : int

    Returns
    -------
    dict
        ``{"champion", "operating_point", "since", "until", "labelled_studies",
        "comparisons": [...]}``, plain JSON (undefined metrics are None).
    """
    champion = inputs.champion
    return _json_safe(
        {
            "champion": champion.name if champion else None,
            "operating_point": operating_point,
            "since": inputs.since.isoformat() if inputs.since else None,
            "until": inputs.until.isoformat() if inputs.until else None,
            "labelled_studies": len(inputs.studies),
            "comparisons": [
                compare_pair(
                    inputs.studies, champion, other, operating_point=operating_point, n_boot=n_boot
                )
                for other in inputs.challengers
                if champion is not None and other.id != champion.id
            ],
        }
    )


def compare_registered(
    session: Session,
    *,
    operating_point: str,
    since: datetime | None = None,
    until: datetime | None = None,
    n_boot: int = 1000,
    challengers: list[str] | None = None,
) -> dict[str, Any]:
    """The champion against each shadow model (or the named ones), read and computed.

    Parameters
    ----------
    session : Session
    operating_point : str
    since, until : datetime, optional
    n_boot : int
    challengers : list of str, optional

    Returns
    -------
    dict
        See :func:`compare_inputs`.
    """
    inputs = comparison_inputs(session, since=since, until=until, challengers=challengers)
    return compare_inputs(inputs, operating_point=operating_point, n_boot=n_boot)


def _json_safe(value: Any) -> Any:
    """NaN (a metric undefined on the data) as None, so the report is plain JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _num(value: Any) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )


def _fmt(entry: dict[str, Any]) -> str:
    if _num(entry["value"]) == "n/a":
        return "n/a"
    return f"{_num(entry['value'])} [{_num(entry['ci_low'])}, {_num(entry['ci_high'])}]"


def format_comparison(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`compare_registered`'s report.

    Parameters
    ----------
    report : dict

    Returns
    -------
    str
    """
    lines = [
        (
            f"champion: {report['champion']}; operating point applied: "
            f"{report['operating_point']}; labelled studies: {report['labelled_studies']}"
        )
    ]
    if not report["comparisons"]:
        lines.append("no shadow model to compare (triage-node model add FILE.onnx --shadow)")
    for comp in report["comparisons"]:
        overall = comp["overall"]
        lines.append("")
        lines.append(
            f"{comp['challenger']} vs {comp['champion']}: {overall['n']} studies scored by both "
            f"({overall['n_abnormal']} abnormal); 95 % bootstrap intervals, paired bootstrap p"
        )
        lines.append(f"{'metric':<32} {'champion':<26} {'challenger':<26} {'difference':<26} p")
        for name, m in overall["metrics"].items():
            d = m["difference"]
            lines.append(
                f"{name:<32} {_fmt(m['champion']):<26} {_fmt(m['challenger']):<26} "
                f"{_fmt(d):<26} {_num(d['p_value'])}"
            )
        applied = f"sensitivity@{comp['applied_operating_point']}"
        lines.append(
            f"{'subgroup':<24} {'n':>4} {'abn':>4}  ROC-AUC champ/chal   {applied} champ/chal"
        )
        for grouping, groups in comp["subgroups"].items():
            for value, g in groups.items():
                gm = g["metrics"]
                auc = gm.get("roc_auc", {})
                sens = gm.get(applied, {})

                def pair(e: dict[str, Any]) -> str:
                    if not e:
                        return "n/a"
                    a, b = e["champion"]["value"], e["challenger"]["value"]
                    return f"{_num(a)}/{_num(b)}"

                lines.append(
                    f"{grouping + '=' + value:<24} {g['n']:>4} {g['n_abnormal']:>4}  "
                    f"{pair(auc):<20} {pair(sens)}"
                )
    return "\n".join(lines)
