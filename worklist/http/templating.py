"""What the web page's templates need besides the API's data: the display time zone,
the formatting filters and the model's intended population."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jinja2 import Environment

from models.population import intended_population, population_warning
from worklist.core.settings import Settings
from worklist.dicom_values import age_years, sex_age
from worklist.display import local_time, probability_text
from worklist.heatmaps import LABEL as HEATMAP_LABEL
from worklist.heatmaps import heatmap_path
from worklist.views import StudyDetail

__all__ = ["configure_templates", "heatmap_context", "population_context"]


def configure_templates(env: Environment, settings: Settings) -> None:
    """Register the filters and globals the templates use.

    Parameters
    ----------
    env : jinja2.Environment
        ``Jinja2Templates(...).env``.
    settings : Settings
        Gives the display time zone.
    """
    zone = settings.time_zone

    def _local(value: datetime | None, seconds: bool = False) -> str:
        return local_time(value, zone, seconds=seconds)

    env.filters["local_time"] = _local
    env.filters["probability"] = probability_text
    env.globals["time_zone"] = zone
    env.globals["heatmap_label"] = HEATMAP_LABEL
    env.globals["sex_age"] = sex_age


def population_context(card: Mapping[str, Any] | None, patient_age: str | None) -> dict[str, Any]:
    """The model's intended population and the warning for this patient, if any.

    Parameters
    ----------
    card : mapping or None
        The active model card (JSON), None when it cannot be read.
    patient_age : str or None
        The study's DICOM Patient's Age.

    Returns
    -------
    dict
        ``population`` (text or None) and ``population_warning`` (text or None).
    """
    population = intended_population(card or {})
    return {
        "population": population.summary() if population else None,
        "population_warning": population_warning(population, age_years(patient_age)),
    }


def heatmap_context(settings: Settings, detail: StudyDetail) -> dict[str, Any]:
    """The evaluated images of the latest result that have a heatmap.

    Parameters
    ----------
    settings : Settings
        Gives the data directory.
    detail : StudyDetail

    Returns
    -------
    dict
        ``heatmaps``: the set of their SOP Instance UIDs.
    """
    if detail.result is None:
        return {"heatmaps": set()}
    uid, revision = detail.row.study_instance_uid, detail.result.revision
    return {
        "heatmaps": {
            im.sop_instance_uid
            for im in detail.images
            if im.evaluated
            and heatmap_path(settings.data_dir, uid, revision, im.sop_instance_uid).is_file()
        }
    }
