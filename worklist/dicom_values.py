"""DICOM values as the worklist shows and groups them: names, ages, age bands, sex."""

from __future__ import annotations

import re

from models.demographics import age_band

__all__ = [
    "age_years",
    "age_years_from_dates",
    "format_person_name",
    "header_age_years",
    "patient_age_band",
    "sex_age",
    "sex_group",
]


def format_person_name(value: str | None) -> str | None:
    """Render a DICOM PN value (``FAMILY^GIVEN^MIDDLE``) as ``FAMILY, GIVEN MIDDLE``.

    Parameters
    ----------
    value : str or None

    Returns
    -------
    str or None
        Only the alphabetic group is used; None when empty.
    """
    if not value:
        return None
    alphabetic = value.split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    family, given = parts[0], " ".join(p for p in parts[1:] if p)
    return f"{family}, {given}" if family and given else (family or given or None)


def age_years(patient_age: str | None) -> float | None:
    """Age in years from a DICOM AS value (``045Y``, ``006M``, ``003W``, ``010D``).

    Parameters
    ----------
    patient_age : str or None

    Returns
    -------
    float or None
        None when missing or not an AS value.
    """
    if not patient_age:
        return None
    match = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", patient_age.upper())
    if not match:
        return None
    n, unit = int(match[1]), match[2] or "Y"
    return {"Y": n, "M": n / 12, "W": n / 52.18, "D": n / 365.25}[unit]


def age_years_from_dates(birth_date: str | None, study_date: str | None) -> float | None:
    """Age in years at the study from two DICOM DA values (``YYYYMMDD``).

    Parameters
    ----------
    birth_date, study_date : str or None
        Patient's Birth Date and Study Date.

    Returns
    -------
    float or None
        Completed years (a fraction below one year); None when either is missing,
        malformed, or the birth date is after the study.
    """
    from datetime import date

    def parse(value: str | None) -> date | None:
        text = (value or "").strip().replace(".", "")  # ACR-NEMA YYYY.MM.DD
        if not re.fullmatch(r"\d{8}", text):
            return None
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            return None

    born, studied = parse(birth_date), parse(study_date)
    if born is None or studied is None or born > studied:
        return None
    years = studied.year - born.year - ((studied.month, studied.day) < (born.month, born.day))
    if years >= 1:
        return float(years)  # completed years, as Patient's Age counts them
    return (studied - born).days / 365.25


def header_age_years(header: object) -> float | None:
    """A patient's age in years from an image header.

    Patient's Age (AS) when present, valid and not zero (``000Y`` is how senders
    write an unknown age), else Patient's Birth Date with Study Date; None when
    neither gives one.

    Parameters
    ----------
    header : pydicom.Dataset or any object with those keyword attributes

    Returns
    -------
    float or None
    """

    def text(keyword: str) -> str | None:
        value = getattr(header, keyword, None)
        return str(value) if value not in (None, "") else None

    age = age_years(text("PatientAge"))
    if age:  # senders write 000Y for an unknown age
        return age
    return age_years_from_dates(text("PatientBirthDate"), text("StudyDate"))


def patient_age_band(patient_age: str | None) -> str:
    """The age band (:data:`models.demographics.AGE_BANDS`) of a DICOM AS value.

    Parameters
    ----------
    patient_age : str or None

    Returns
    -------
    str
        A band name, or ``unknown``.
    """
    return age_band(age_years(patient_age))


def sex_group(patient_sex: str | None) -> str:
    """``F``, ``M``, ``O`` or ``unknown`` from a DICOM Patient's Sex value.

    Parameters
    ----------
    patient_sex : str or None

    Returns
    -------
    str
    """
    value = (patient_sex or "").strip().upper()
    return value if value in ("F", "M", "O") else "unknown"


_AGE_UNIT_WORD = {"D": "d", "W": "wk", "M": "mo", "Y": ""}


def sex_age(sex: str | None, age: str | None) -> str:
    """Sex and age as people write them: ``"M 67"``, ``"F 18 mo"``, ``"F"``, ``""``.

    An absent, empty or ``O`` sex is left out ("O 000Y" says nothing); an age of zero
    is left out (senders write ``000Y`` for unknown).

    Parameters
    ----------
    sex : str or None
        DICOM Patient's Sex (``M``, ``F``, ``O``).
    age : str or None
        DICOM Patient's Age (``nnnD|W|M|Y``).

    Returns
    -------
    str
    """
    sex_text = (sex or "").strip().upper()
    sex_text = sex_text if sex_text in ("M", "F") else ""
    age_text = ""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD])\s*", (age or "").upper())
    if match and int(match[1]) > 0:
        age_text = f"{int(match[1])} {_AGE_UNIT_WORD[match[2]]}".strip()
    return " ".join(part for part in (sex_text, age_text) if part)
