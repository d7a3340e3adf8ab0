"""The safety rule of a promotion: a challenger that is worse for patients is refused.

On the radiologist-labelled studies that both the champion and the challenger scored
(:func:`worklist.model_compare.compare_pair`), a promotion is **refused** when

1. no labelled study was scored by both models, or none of them is abnormal (nothing
   shows the challenger is not worse);
2. the challenger's sensitivity at the operating point the node applies
   (``TRIAGE_OPERATING_POINT``) is lower than the champion's (any drop:
   :data:`SENSITIVITY_MARGIN` is 0);
3. in any subgroup (age band, sex, view) with at least one abnormal study, the
   challenger's underdiagnosis rate (1 - sensitivity at the applied operating point)
   is higher than the champion's by more than :data:`UNDERDIAGNOSIS_MARGIN` (0.05).

The rule compares point estimates on the site's own labels; the intervals printed by
``triage-node model compare`` say how much those few studies can tell. An admin can
override it with ``triage-node model promote NAME --force --reason TEXT``: the
reason, the violations and the admin's name go into the audit log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from worklist.model_compare import compare_pair, labelled_studies
from worklist.model_registry import SafetyRule
from worklist.tables import ModelEntry

__all__ = ["SENSITIVITY_MARGIN", "UNDERDIAGNOSIS_MARGIN", "promotion_violations", "safety_rule"]

#: Largest allowed drop of sensitivity at the applied operating point.
SENSITIVITY_MARGIN = 0.0
#: Largest allowed rise of any subgroup's underdiagnosis rate.
UNDERDIAGNOSIS_MARGIN = 0.05


def promotion_violations(report: dict[str, Any]) -> list[str]:
    """The reasons to refuse promoting the challenger of a comparison (empty: allowed).

    Parameters
    ----------
    report : dict
        :func:`worklist.model_compare.compare_pair`'s report.

    Returns
    -------
    list of str
    """
    overall = report["overall"]
    point = report["applied_operating_point"]
    if overall["n"] == 0:
        return ["no radiologist-labelled study was scored by both models"]
    if overall["n_abnormal"] == 0:
        return ["no abnormal labelled study was scored by both models: sensitivity unknown"]
    out: list[str] = []
    sens = overall["metrics"][f"sensitivity@{point}"]
    champ, chal = sens["champion"]["value"], sens["challenger"]["value"]
    if chal < champ - SENSITIVITY_MARGIN:
        out.append(
            f"sensitivity at {point} {chal:.3f} is lower than the champion's {champ:.3f} "
            f"on {overall['n']} labelled studies ({overall['n_abnormal']} abnormal)"
        )
    for grouping, groups in report["subgroups"].items():
        for value, group in groups.items():
            if group["n_abnormal"] == 0:
                continue
            under = group["metrics"]["underdiagnosis_rate"]
            a, b = under["champion"]["value"], under["challenger"]["value"]
            if b - a > UNDERDIAGNOSIS_MARGIN:
                out.append(
                    f"underdiagnosis rate of {grouping} {value} rises from {a:.3f} to {b:.3f} "
                    f"(more than {UNDERDIAGNOSIS_MARGIN}; {group['n_abnormal']} abnormal studies)"
                )
    return out


def safety_rule(
    operating_point: str, *, since: datetime | None = None, n_boot: int = 0
) -> SafetyRule:
    """The rule as :func:`worklist.model_registry.promote` takes it.

    Parameters
    ----------
    operating_point : str
        The applied one.
    since : datetime, optional
        Only studies received since then.
    n_boot : int
        Bootstrap replicates; 0 by default, since the rule reads point estimates and
        runs inside the promotion's transaction.

    Returns
    -------
    callable
        ``(session, champion, challenger) -> list of str``.
    """

    def rule(session: Session, champion: ModelEntry, challenger: ModelEntry) -> list[str]:
        studies = labelled_studies(session, since=since)
        report = compare_pair(
            studies, champion, challenger, operating_point=operating_point, n_boot=n_boot
        )
        return promotion_violations(report)

    return rule
