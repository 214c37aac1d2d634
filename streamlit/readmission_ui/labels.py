"""What the Predict form shows for each field and level, derived from the feature contract.

Only what people read changes: every value the form sends stays the contract's level or code (``AfricanAmerican``,
``MC``, ``1``), exactly as the API, the files and the stores spell them.
"""

from __future__ import annotations

import re

from readmission import schema

UNKNOWN = "Unknown"  # the form's choice for a field that may be missing: sent as null
FLAG_PREFIX = "1 if "  # how the contract describes a 0/1 field
YES_NO = ("No", "Yes")  # the choices of a 0/1 field, by value


def level_label(col: schema.Column, value: object) -> str:
    """The text of one choice of a categorical field: the contract's label of the level (after the code for
    coded columns, ``1: Emergency``), else the level itself; ``UNKNOWN`` for the missing choice."""
    if value == UNKNOWN:
        return UNKNOWN
    text = col.labels.get(str(value), "")
    if col.kind is schema.Kind.CODED:
        return f"{value}: {text}" if text and text != str(value) else str(value)
    return text or str(value)


_CODE_LEGEND = re.compile(r"\s*\('[^']*' = [^)]*\)$")  # "('None' = not measured)": for readers of raw codes


def field_label(field: schema.Column | schema.HistoryFeature) -> str:
    """A field's label on the form: the contract's description, without a legend of raw codes when the
    choices already read as words ("HbA1c test result ('None' = not measured)" -> "HbA1c test result")."""
    if isinstance(field, schema.Column) and field.labels:
        return _CODE_LEGEND.sub("", field.description)
    return field.description


def is_flag(field: schema.Column | schema.HistoryFeature) -> bool:
    """Whether the field holds 0 or 1 only (a yes/no fact): the form offers No and Yes, sent as 0 and 1."""
    if isinstance(field, schema.HistoryFeature):
        return field.maximum == 1
    return field.kind is schema.Kind.INTEGER and (field.minimum, field.maximum) == (0, 1)


def flag_label(field: schema.Column | schema.HistoryFeature) -> str:
    """The statement a 0/1 field answers with No or Yes: the contract's description without its "1 if" ("The
    patient's previous encounter was followed by any readmission")."""
    text = field.description.removeprefix(FLAG_PREFIX).strip()
    return text[:1].upper() + text[1:]


def outcome_label(code: str) -> str:
    """How people read a level of `readmitted` ("<30": "Within 30 days")."""
    return level_label(schema.column(schema.TARGET), code)


# The outcomes in clinical order, which is the contract's order of the levels of `readmitted`.
OUTCOME_LABELS: dict[str, str] = {code: outcome_label(code) for code in schema.TARGET_LABELS}


_HISTORY = {h.name: h for h in schema.HISTORY_FEATURES}


def factor_label(feature: str, description: str, value: object) -> str:
    """One factor of an explanation as the form words it: "Inpatient visits in the year before: 4",
    "Type of admission: 1: Emergency", "The patient's previous encounter was followed by ...: Yes"; a sum the
    model derives keeps the API's description. Unknown values read ``UNKNOWN``."""
    field = schema.COLUMNS_BY_NAME.get(feature) or _HISTORY.get(feature)
    if field is None:
        return f"{description}: {UNKNOWN if value is None else value}"
    if is_flag(field) and value in (0, 1):
        return f"{flag_label(field)}: {YES_NO[int(value)]}"
    if value is None:
        return f"{field_label(field)}: {UNKNOWN}"
    if isinstance(field, schema.Column) and (field.labels or field.kind is schema.Kind.CODED):
        return f"{field_label(field)}: {level_label(field, value)}"
    return f"{field_label(field)}: {value}"
