"""The feature contract: every column of the UCI file, declared once.

The loader, the cleaner, the API request model, the UI form and the load generator all read
these declarations; no other module keeps its own list of categories or ranges.

Conventions of the source file, kept as they are in the RAW store:
- ``?`` marks a missing value (``MISSING``); the CLEAN store turns it into NULL.
- ``None`` in ``max_glu_serum`` / ``A1Cresult`` is a real level: "test not done".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

MISSING = "?"
TARGET = "readmitted"
TARGET_LABELS: tuple[str, ...] = ("NO", ">30", "<30")
POSITIVE_LABEL = "<30"  # the 30-day readmission risk is P(readmitted == "<30")
OUTCOME_LABELS = {"NO": "No readmission", ">30": "After 30 days", "<30": "Within 30 days"}  # in that order

# Discharge dispositions after which no readmission is possible (death or hospice): the model is trained
# without them (Strack et al. 2014 removed them from the cohort), so they are outside its population.
DEATH_OR_HOSPICE_DISCHARGE_IDS: frozenset[int] = frozenset({11, 13, 14, 19, 20, 21})
ELIGIBILITY_FIELD = "discharge_disposition_id"


class Kind(StrEnum):
    """How a column is typed and validated."""

    IDENTIFIER = "identifier"  # integer key, never a feature
    INTEGER = "integer"  # count or duration with a range
    CODED = "coded"  # integer code of a lookup table, treated as a category
    CATEGORY = "category"  # free-text level from a closed list
    DIAGNOSIS = "diagnosis"  # ICD-9 code, validated by pattern
    TARGET = "target"


class Section(StrEnum):
    """Groups of the UI form and of the documentation."""

    DEMOGRAPHICS = "demographics"
    ADMISSION = "admission"
    HISTORY = "history"
    DIAGNOSES = "diagnoses"
    MEDICATIONS = "medications"
    KEYS = "keys"
    OUTCOME = "outcome"


@dataclass(frozen=True)
class Column:
    """One column of the source file and what values it may hold."""

    name: str
    kind: Kind
    section: Section
    description: str
    levels: tuple[str, ...] = ()  # allowed values of CATEGORY/CODED columns (as text)
    labels: Mapping[str, str] = field(default_factory=dict)  # human labels of levels
    minimum: int | None = None
    maximum: int | None = None
    may_be_missing: bool = False  # the source writes "?" for missing values

    @property
    def is_feature(self) -> bool:
        """Whether the model may use the column."""
        return self.kind not in (Kind.IDENTIFIER, Kind.TARGET)

    @property
    def is_integer(self) -> bool:
        """Whether the stored value is an integer."""
        return self.kind in (Kind.IDENTIFIER, Kind.INTEGER, Kind.CODED)

    @property
    def field_name(self) -> str:
        """Python identifier used for the column in pydantic models."""
        return self.name.replace("-", "_")


# ICD-9 code as the source writes it: leading zeros dropped, optional V/E prefix and decimals.
DIAGNOSIS_PATTERN = r"^(?:[0-9]{1,3}(?:\.[0-9]{1,2})?|V[0-9]{1,2}(?:\.[0-9]{1,2})?|E[0-9]{3}(?:\.[0-9])?)$"

AGE_BRACKETS = tuple(f"[{lo}-{lo + 10})" for lo in range(0, 100, 10))
WEIGHT_BRACKETS = (*(f"[{lo}-{lo + 25})" for lo in range(0, 200, 25)), ">200")
MEDICATION_LEVELS = ("No", "Steady", "Up", "Down")

# Human labels of the levels (the form shows them; every file, request and store keeps the level itself).
# Meanings as the data set's description (Strack et al. 2014) gives them.
AGE_LABELS = {f"[{lo}-{lo + 10})": f"{lo}-{lo + 9} years" for lo in range(0, 100, 10)}
WEIGHT_LABELS = {**{f"[{lo}-{lo + 25})": f"{lo}-{lo + 24} lb" for lo in range(0, 200, 25)}, ">200": "Over 200 lb"}
MEDICATION_LABELS = {"No": "Not prescribed", "Steady": "Steady", "Up": "Increased", "Down": "Decreased"}
GLUCOSE_LABELS = {"None": "Not measured", "Norm": "Normal", ">200": "Over 200 mg/dL", ">300": "Over 300 mg/dL"}
A1C_LABELS = {"None": "Not measured", "Norm": "Normal (below 7%)", ">7": "7% to 8%", ">8": "Over 8%"}
CHANGE_LABELS = {"No": "No change", "Ch": "Changed"}
RACE_LABELS = {
    "AfricanAmerican": "African American",
    "Asian": "Asian",
    "Caucasian": "Caucasian",
    "Hispanic": "Hispanic",
    "Other": "Other",
}

ADMISSION_TYPES = {
    "1": "Emergency",
    "2": "Urgent",
    "3": "Elective",
    "4": "Newborn",
    "5": "Not Available",
    "6": "NULL",
    "7": "Trauma Center",
    "8": "Not Mapped",
}
DISCHARGE_DISPOSITIONS = {
    "1": "Discharged to home",
    "2": "Transferred to another short term hospital",
    "3": "Transferred to SNF",
    "4": "Transferred to ICF",
    "5": "Transferred to another type of inpatient care institution",
    "6": "Discharged home with home health service",
    "7": "Left against medical advice",
    "8": "Discharged home under care of home IV provider",
    "9": "Admitted as an inpatient to this hospital",
    "10": "Neonate discharged to another hospital for neonatal aftercare",
    "11": "Expired",
    "12": "Still patient or expected to return for outpatient services",
    "13": "Hospice / home",
    "14": "Hospice / medical facility",
    "15": "Transferred within this institution to a Medicare approved swing bed",
    "16": "Referred to another institution for outpatient services",
    "17": "Referred to this institution for outpatient services",
    "18": "NULL",
    "19": "Expired at home (Medicaid only, hospice)",
    "20": "Expired in a medical facility (Medicaid only, hospice)",
    "21": "Expired, place unknown (Medicaid only, hospice)",
    "22": "Transferred to another rehab facility",
    "23": "Transferred to a long term care hospital",
    "24": "Transferred to a Medicaid-only nursing facility",
    "25": "Not Mapped",
    "26": "Unknown/Invalid",
    "27": "Transferred to a federal health care facility",
    "28": "Referred to a psychiatric hospital or unit",
    "29": "Transferred to a Critical Access Hospital",
    "30": "Transferred to another type of health care institution",
}
ADMISSION_SOURCES = {
    "1": "Physician Referral",
    "2": "Clinic Referral",
    "3": "HMO Referral",
    "4": "Transfer from a hospital",
    "5": "Transfer from a Skilled Nursing Facility",
    "6": "Transfer from another health care facility",
    "7": "Emergency Room",
    "8": "Court/Law Enforcement",
    "9": "Not Available",
    "10": "Transfer from critical access hospital",
    "11": "Normal Delivery",
    "12": "Premature Delivery",
    "13": "Sick Baby",
    "14": "Extramural Birth",
    "15": "Not Available",
    "17": "NULL",
    "18": "Transfer from another home health agency",
    "19": "Readmission to same home health agency",
    "20": "Not Mapped",
    "21": "Unknown/Invalid",
    "22": "Transfer from hospital inpatient, same facility, separate claim",
    "23": "Born inside this hospital",
    "24": "Born outside this hospital",
    "25": "Transfer from Ambulatory Surgery Center",
    "26": "Transfer from Hospice",
}

PAYER_CODES = ("BC", "CH", "CM", "CP", "DM", "FR", "HM", "MC", "MD", "MP", "OG", "OT", "PO", "SI", "SP", "UN", "WC")
# The source explains none of its payer codes beyond naming Blue Cross/Blue Shield, Medicare and self-pay among
# them; the usual abbreviations below are labelled, the others keep their code (no meaning is guessed).
_PAYER_MEANINGS = {
    "BC": "Blue Cross/Blue Shield",
    "HM": "HMO",
    "MC": "Medicare",
    "MD": "Medicaid",
    "OG": "Other government",
    "OT": "Other",
    "SP": "Self-pay",
    "WC": "Workers' compensation",
}
PAYER_LABELS = {
    code: f"{_PAYER_MEANINGS[code]} ({code})" if code in _PAYER_MEANINGS else f"{code} (not explained by the source)"
    for code in PAYER_CODES
}
MEDICAL_SPECIALTIES = (
    "AllergyandImmunology",
    "Anesthesiology",
    "Anesthesiology-Pediatric",
    "Cardiology",
    "Cardiology-Pediatric",
    "DCPTEAM",
    "Dentistry",
    "Dermatology",
    "Emergency/Trauma",
    "Endocrinology",
    "Endocrinology-Metabolism",
    "Family/GeneralPractice",
    "Gastroenterology",
    "Gynecology",
    "Hematology",
    "Hematology/Oncology",
    "Hospitalist",
    "InfectiousDiseases",
    "InternalMedicine",
    "Nephrology",
    "Neurology",
    "Neurophysiology",
    "Obsterics&Gynecology-GynecologicOnco",
    "Obstetrics",
    "ObstetricsandGynecology",
    "Oncology",
    "Ophthalmology",
    "Orthopedics",
    "Orthopedics-Reconstructive",
    "Osteopath",
    "Otolaryngology",
    "OutreachServices",
    "Pathology",
    "Pediatrics",
    "Pediatrics-AllergyandImmunology",
    "Pediatrics-CriticalCare",
    "Pediatrics-EmergencyMedicine",
    "Pediatrics-Endocrinology",
    "Pediatrics-Hematology-Oncology",
    "Pediatrics-InfectiousDiseases",
    "Pediatrics-Neurology",
    "Pediatrics-Pulmonology",
    "Perinatology",
    "PhysicalMedicineandRehabilitation",
    "PhysicianNotFound",
    "Podiatry",
    "Proctology",
    "Psychiatry",
    "Psychiatry-Addictive",
    "Psychiatry-Child/Adolescent",
    "Psychology",
    "Pulmonology",
    "Radiologist",
    "Radiology",
    "Resident",
    "Rheumatology",
    "Speech",
    "SportsMedicine",
    "Surgeon",
    "Surgery-Cardiovascular",
    "Surgery-Cardiovascular/Thoracic",
    "Surgery-Colon&Rectal",
    "Surgery-General",
    "Surgery-Maxillofacial",
    "Surgery-Neuro",
    "Surgery-Pediatric",
    "Surgery-Plastic",
    "Surgery-PlasticwithinHeadandNeck",
    "Surgery-Thoracic",
    "Surgery-Vascular",
    "SurgicalSpecialty",
    "Urology",
)
# Readable names of the specialties (the source glues words: 'InternalMedicine', 'AllergyandImmunology').
MEDICAL_SPECIALTY_LABELS = {
    "AllergyandImmunology": "Allergy and Immunology",
    "Anesthesiology": "Anesthesiology",
    "Anesthesiology-Pediatric": "Anesthesiology, Pediatric",
    "Cardiology": "Cardiology",
    "Cardiology-Pediatric": "Cardiology, Pediatric",
    "DCPTEAM": "DCPTEAM (not explained by the source)",
    "Dentistry": "Dentistry",
    "Dermatology": "Dermatology",
    "Emergency/Trauma": "Emergency/Trauma",
    "Endocrinology": "Endocrinology",
    "Endocrinology-Metabolism": "Endocrinology and Metabolism",
    "Family/GeneralPractice": "Family/General Practice",
    "Gastroenterology": "Gastroenterology",
    "Gynecology": "Gynecology",
    "Hematology": "Hematology",
    "Hematology/Oncology": "Hematology/Oncology",
    "Hospitalist": "Hospitalist",
    "InfectiousDiseases": "Infectious Diseases",
    "InternalMedicine": "Internal Medicine",
    "Nephrology": "Nephrology",
    "Neurology": "Neurology",
    "Neurophysiology": "Neurophysiology",
    "Obsterics&Gynecology-GynecologicOnco": "Obstetrics and Gynecology, Gynecologic Oncology",
    "Obstetrics": "Obstetrics",
    "ObstetricsandGynecology": "Obstetrics and Gynecology",
    "Oncology": "Oncology",
    "Ophthalmology": "Ophthalmology",
    "Orthopedics": "Orthopedics",
    "Orthopedics-Reconstructive": "Orthopedics, Reconstructive",
    "Osteopath": "Osteopath",
    "Otolaryngology": "Otolaryngology",
    "OutreachServices": "Outreach Services",
    "Pathology": "Pathology",
    "Pediatrics": "Pediatrics",
    "Pediatrics-AllergyandImmunology": "Pediatrics, Allergy and Immunology",
    "Pediatrics-CriticalCare": "Pediatrics, Critical Care",
    "Pediatrics-EmergencyMedicine": "Pediatrics, Emergency Medicine",
    "Pediatrics-Endocrinology": "Pediatrics, Endocrinology",
    "Pediatrics-Hematology-Oncology": "Pediatrics, Hematology/Oncology",
    "Pediatrics-InfectiousDiseases": "Pediatrics, Infectious Diseases",
    "Pediatrics-Neurology": "Pediatrics, Neurology",
    "Pediatrics-Pulmonology": "Pediatrics, Pulmonology",
    "Perinatology": "Perinatology",
    "PhysicalMedicineandRehabilitation": "Physical Medicine and Rehabilitation",
    "PhysicianNotFound": "Physician not found",
    "Podiatry": "Podiatry",
    "Proctology": "Proctology",
    "Psychiatry": "Psychiatry",
    "Psychiatry-Addictive": "Psychiatry, Addiction",
    "Psychiatry-Child/Adolescent": "Psychiatry, Child/Adolescent",
    "Psychology": "Psychology",
    "Pulmonology": "Pulmonology",
    "Radiologist": "Radiologist",
    "Radiology": "Radiology",
    "Resident": "Resident",
    "Rheumatology": "Rheumatology",
    "Speech": "Speech",
    "SportsMedicine": "Sports Medicine",
    "Surgeon": "Surgeon",
    "Surgery-Cardiovascular": "Surgery, Cardiovascular",
    "Surgery-Cardiovascular/Thoracic": "Surgery, Cardiovascular/Thoracic",
    "Surgery-Colon&Rectal": "Surgery, Colon and Rectal",
    "Surgery-General": "Surgery, General",
    "Surgery-Maxillofacial": "Surgery, Maxillofacial",
    "Surgery-Neuro": "Surgery, Neuro",
    "Surgery-Pediatric": "Surgery, Pediatric",
    "Surgery-Plastic": "Surgery, Plastic",
    "Surgery-PlasticwithinHeadandNeck": "Surgery, Plastic within Head and Neck",
    "Surgery-Thoracic": "Surgery, Thoracic",
    "Surgery-Vascular": "Surgery, Vascular",
    "SurgicalSpecialty": "Surgical Specialty",
    "Urology": "Urology",
}

MEDICATIONS = (
    "metformin",
    "repaglinide",
    "nateglinide",
    "chlorpropamide",
    "glimepiride",
    "acetohexamide",
    "glipizide",
    "glyburide",
    "tolbutamide",
    "pioglitazone",
    "rosiglitazone",
    "acarbose",
    "miglitol",
    "troglitazone",
    "tolazamide",
    "examide",
    "citoglipton",
    "insulin",
    "glyburide-metformin",
    "glipizide-metformin",
    "glimepiride-pioglitazone",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)


def _category(
    name: str,
    section: Section,
    description: str,
    levels: tuple[str, ...],
    may_be_missing: bool = False,
    labels: Mapping[str, str] | None = None,
) -> Column:
    return Column(
        name, Kind.CATEGORY, section, description, levels=levels, labels=labels or {}, may_be_missing=may_be_missing
    )


def _coded(name: str, description: str, labels: Mapping[str, str]) -> Column:
    return Column(name, Kind.CODED, Section.ADMISSION, description, levels=tuple(labels), labels=labels)


def _count(name: str, section: Section, description: str, minimum: int, maximum: int) -> Column:
    return Column(name, Kind.INTEGER, section, description, minimum=minimum, maximum=maximum)


def _diagnosis(n: int, description: str) -> Column:
    return Column(f"diag_{n}", Kind.DIAGNOSIS, Section.DIAGNOSES, description, may_be_missing=True)


COLUMNS: tuple[Column, ...] = (
    Column("encounter_id", Kind.IDENTIFIER, Section.KEYS, "Unique identifier of the encounter", minimum=1),
    Column("patient_nbr", Kind.IDENTIFIER, Section.KEYS, "Unique identifier of the patient", minimum=1),
    _category(
        "race",
        Section.DEMOGRAPHICS,
        "Race",
        tuple(RACE_LABELS),
        may_be_missing=True,
        labels=RACE_LABELS,
    ),
    _category("gender", Section.DEMOGRAPHICS, "Gender", ("Female", "Male", "Unknown/Invalid")),
    _category("age", Section.DEMOGRAPHICS, "Age in 10-year brackets", AGE_BRACKETS, labels=AGE_LABELS),
    _category(
        "weight",
        Section.DEMOGRAPHICS,
        "Weight in pounds (brackets)",
        WEIGHT_BRACKETS,
        may_be_missing=True,
        labels=WEIGHT_LABELS,
    ),
    _coded("admission_type_id", "Type of admission", ADMISSION_TYPES),
    _coded("discharge_disposition_id", "Where the patient went after discharge", DISCHARGE_DISPOSITIONS),
    _coded("admission_source_id", "Source of the admission", ADMISSION_SOURCES),
    _count("time_in_hospital", Section.ADMISSION, "Days between admission and discharge", 1, 14),
    _category(
        "payer_code", Section.ADMISSION, "Payer (insurance) code", PAYER_CODES, may_be_missing=True, labels=PAYER_LABELS
    ),
    _category(
        "medical_specialty",
        Section.ADMISSION,
        "Specialty of the admitting physician",
        MEDICAL_SPECIALTIES,
        may_be_missing=True,
        labels=MEDICAL_SPECIALTY_LABELS,
    ),
    _count("num_lab_procedures", Section.ADMISSION, "Lab tests performed during the encounter", 0, 150),
    _count("num_procedures", Section.ADMISSION, "Procedures (other than lab tests) performed", 0, 10),
    _count("num_medications", Section.ADMISSION, "Distinct generic drugs administered", 0, 100),
    _count("number_outpatient", Section.HISTORY, "Outpatient visits in the year before", 0, 100),
    _count("number_emergency", Section.HISTORY, "Emergency visits in the year before", 0, 100),
    _count("number_inpatient", Section.HISTORY, "Inpatient visits in the year before", 0, 50),
    _diagnosis(1, "Primary diagnosis (ICD-9)"),
    _diagnosis(2, "Secondary diagnosis (ICD-9)"),
    _diagnosis(3, "Additional secondary diagnosis (ICD-9)"),
    _count("number_diagnoses", Section.DIAGNOSES, "Diagnoses entered into the system", 1, 20),
    _category(
        "max_glu_serum",
        Section.DIAGNOSES,
        "Glucose serum test result ('None' = not measured)",
        tuple(GLUCOSE_LABELS),
        labels=GLUCOSE_LABELS,
    ),
    _category(
        "A1Cresult",
        Section.DIAGNOSES,
        "HbA1c test result ('None' = not measured)",
        tuple(A1C_LABELS),
        labels=A1C_LABELS,
    ),
    *(
        _category(m, Section.MEDICATIONS, f"Dosage change of {m}", MEDICATION_LEVELS, labels=MEDICATION_LABELS)
        for m in MEDICATIONS
    ),
    _category(
        "change",
        Section.MEDICATIONS,
        "Any change of diabetic medication ('Ch' = changed)",
        tuple(CHANGE_LABELS),
        labels=CHANGE_LABELS,
    ),
    _category("diabetesMed", Section.MEDICATIONS, "Any diabetic medication prescribed", ("No", "Yes")),
    Column(
        TARGET,
        Kind.TARGET,
        Section.OUTCOME,
        "Readmitted within 30 days, after 30 days, or not",
        levels=TARGET_LABELS,
        labels=OUTCOME_LABELS,
    ),
)

COLUMNS_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
FEATURE_COLUMNS: tuple[Column, ...] = tuple(c for c in COLUMNS if c.is_feature)
FEATURE_NAMES: tuple[str, ...] = tuple(c.name for c in FEATURE_COLUMNS)


def column(name: str) -> Column:
    """The declaration of ``name``; KeyError naming the known columns otherwise."""
    try:
        return COLUMNS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown column {name!r}; the contract declares: {', '.join(COLUMN_NAMES)}") from None


WHOLE_NUMBER_PATTERN = r"0|[1-9][0-9]*"  # ASCII digits, no sign, no leading zeros: how the source writes counts
IDENTIFIER_PATTERN = r"[1-9][0-9]{0,17}"  # positive, at most 18 digits: always fits a 64-bit integer


def check_value(col: Column, value: str) -> str | None:
    """Why the raw text ``value`` breaks the contract for ``col``, or None if it is allowed.

    Total: any string gets an answer, never an exception. The loader's vectorised check
    (``readmission.validation``) gives the same verdict for every string (a property test holds them
    together), so the loader, the page and batch scoring agree on every cell.
    """
    if value == "":
        unknown = f"; write {MISSING} when it is unknown" if col.may_be_missing else ""
        return f"{col.name}: no value{unknown}"
    if value == MISSING:
        return None if col.may_be_missing else f"{col.name}: missing value '?' is not allowed"
    if col.is_integer:
        return _integer_problem(col, value)
    unknown = f", or {MISSING} when unknown" if col.may_be_missing else ""
    if col.kind is Kind.DIAGNOSIS:
        if re.fullmatch(DIAGNOSIS_PATTERN, value) is None:
            return f"{col.name}: {value!r} is not an ICD-9 code (e.g. 250.83, V57, E878{unknown})"
        return None
    if value not in col.levels:
        return f"{col.name}: unknown level {value!r} (allowed: {', '.join(col.levels)}{unknown})"
    return None


def eligibility_problem(discharge_disposition_id: int | str | None) -> str | None:
    """Why an encounter with this discharge disposition is outside the model's population, or None.

    Encounters ending in death or hospice (``DEATH_OR_HOSPICE_DISCHARGE_IDS``) cannot be readmitted; the
    training cohort leaves them out, so the model has no valid answer for them. The API answers 422
    ``not_eligible``, the page lists the row; the loader still stores them in RAW (CLEAN leaves them out).
    """
    try:
        code = int(str(discharge_disposition_id))
    except ValueError:
        return None  # not a code at all: the contract's own check names it
    if code not in DEATH_OR_HOSPICE_DISCHARGE_IDS:
        return None
    label = DISCHARGE_DISPOSITIONS.get(str(code), "?")
    return (
        f"{ELIGIBILITY_FIELD}: {code} ({label}) is not eligible: the encounter ended in death or hospice, so no "
        "readmission can follow and the model, trained without such encounters, has no answer for it"
    )


def _integer_problem(col: Column, value: str) -> str | None:
    if col.kind is Kind.IDENTIFIER:
        if re.fullmatch(IDENTIFIER_PATTERN, value) is None:
            return f"{col.name}: {value!r} is not a positive whole number of at most 18 digits"
        return None
    if re.fullmatch(WHOLE_NUMBER_PATTERN, value) is None:
        return f"{col.name}: {value!r} is not a whole number (digits 0-9, no sign, no leading zero: e.g. 3)"
    if col.kind is Kind.CODED and value not in col.levels:
        return f"{col.name}: unknown code {value!r} (allowed: {', '.join(col.levels)})"
    number = int(value)
    if col.minimum is not None and number < col.minimum:
        return f"{col.name}: {number} is below the minimum {col.minimum}"
    if col.maximum is not None and number > col.maximum:
        return f"{col.name}: {number} is above the maximum {col.maximum}"
    return None


# --- the encounter as the API accepts it --------------------------------------------------------------

PRIOR_ENCOUNTERS = "prior_encounters"


@dataclass(frozen=True)
class HistoryFeature:
    """A feature derived from the patient's EARLIER encounters only (never later ones: that leaks the label)."""

    name: str
    description: str
    maximum: int = 500


HISTORY_FEATURES: tuple[HistoryFeature, ...] = (
    HistoryFeature(
        PRIOR_ENCOUNTERS, "Earlier encounters of the same patient known to the system (0 for a first visit)"
    ),
    HistoryFeature("prior_readmissions", "Earlier encounters of the patient that were followed by any readmission"),
    HistoryFeature(
        "prior_early_readmissions", "Earlier encounters of the patient followed by a readmission within 30 days"
    ),
    HistoryFeature(
        "previous_number_inpatient",
        "Inpatient visits in the year before the patient's previous encounter (0 for a first visit)",
        maximum=50,
    ),
    HistoryFeature(
        "previous_readmission", "1 if the patient's previous encounter was followed by any readmission", maximum=1
    ),
    HistoryFeature(
        "previous_early_readmission",
        "1 if the patient's previous encounter was followed by a readmission within 30 days",
        maximum=1,
    ),
)
HISTORY_FEATURE_NAMES: tuple[str, ...] = tuple(h.name for h in HISTORY_FEATURES)
# The history features as columns of an uploaded file (optional there: empty or absent means a first visit).
HISTORY_COLUMNS: tuple[Column, ...] = tuple(
    Column(h.name, Kind.INTEGER, Section.HISTORY, h.description, minimum=0, maximum=h.maximum) for h in HISTORY_FEATURES
)
MODEL_INPUT_NAMES: tuple[str, ...] = FEATURE_NAMES + HISTORY_FEATURE_NAMES


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema defines one: 3 or 3.0, but not true/false, "3" or 3.5."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # anything else is left to the strict int / Literal check that follows


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


def _encounter_field(col: Column) -> tuple[Any, Any]:
    """Type and pydantic Field of one feature column in the request model."""
    if col.kind in (Kind.CATEGORY, Kind.CODED):
        literal: Any = Literal[tuple(col.levels)]
        if col.kind is Kind.CODED:
            literal = Annotated[Literal[tuple(int(v) for v in col.levels)], BeforeValidator(_json_integer)]
        if col.name == ELIGIBILITY_FIELD:  # the document lists the eligible codes; the others get not_eligible
            eligible = [int(v) for v in col.levels if int(v) not in DEATH_OR_HOSPICE_DISCHARGE_IDS]
            literal = Annotated[literal, WithJsonSchema({"type": "integer", "enum": eligible})]
        typ = Optional[literal] if col.may_be_missing else literal  # noqa: UP045 - runtime construction
        default = None if col.may_be_missing else ...
        return typ, Field(default, alias=col.name, description=col.description)
    if col.kind is Kind.DIAGNOSIS:
        typ = Optional[str] if col.may_be_missing else str  # noqa: UP045
        default = None if col.may_be_missing else ...
        return typ, Field(default, alias=col.name, description=col.description, pattern=DIAGNOSIS_PATTERN)
    return JsonInt, Field(..., alias=col.name, description=col.description, ge=col.minimum, le=col.maximum)


class _EncounterBase(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # no "3" for 3 or true for 1: each value has the JSON type the schema states
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
    )


_ENCOUNTER_FIELDS: dict[str, Any] = {c.field_name: _encounter_field(c) for c in FEATURE_COLUMNS}
for _history in HISTORY_FEATURES:
    _ENCOUNTER_FIELDS[_history.name] = (
        JsonInt,
        Field(0, ge=0, le=_history.maximum, alias=_history.name, description=_history.description),
    )

# The caller's own id of the encounter, optional: stored in the prediction log so that an outcome fed later
# (``readmission outcomes``, POST /outcomes) is joined to the prediction; never a model input.
ENCOUNTER_ID = "encounter_id"
MAX_ENCOUNTER_ID = 10**18 - 1  # IDENTIFIER_PATTERN: at most 18 digits, so it always fits the log's BIGINT
# The bounds sit on the integer inside the Optional: put on the Optional they are enforced too, but the JSON
# schema then shows pydantic's "ge"/"le", not minimum/maximum, and an OpenAPI client takes 0 as valid.
_ENCOUNTER_INT = Annotated[int, Field(ge=1, le=MAX_ENCOUNTER_ID), BeforeValidator(_json_integer)]
_ENCOUNTER_FIELDS[ENCOUNTER_ID] = (
    Optional[_ENCOUNTER_INT],  # noqa: UP045 - runtime construction
    Field(
        None,
        alias=ENCOUNTER_ID,
        description="Your id of this encounter (optional; never a model input): stored with the prediction so "
        "that its observed outcome, sent later to POST /outcomes, is joined to it for live model quality.",
    ),
)

EncounterFeatures: type[BaseModel] = create_model(
    "EncounterFeatures",
    __base__=_EncounterBase,
    __doc__="One patient encounter as the model takes it: the source's feature columns, null for missing.",
    **_ENCOUNTER_FIELDS,
)


def encounter_to_raw(values: Mapping[str, Any]) -> dict[str, str]:
    """Raw-file text of the feature values in ``values`` (None becomes '?')."""
    out: dict[str, str] = {}
    for col in FEATURE_COLUMNS:
        value = values.get(col.name)
        out[col.name] = MISSING if value is None else str(value)
    return out


def raw_violations(raw: Mapping[str, str]) -> list[str]:
    """Why a row of the raw file's text breaks the contract, per feature column (empty when it is valid).

    History features are optional (absent: a first visit); given, they must be whole numbers in range.
    """
    problems = []
    for col in FEATURE_COLUMNS:
        if (problem := check_value(col, raw.get(col.name, ""))) is not None:
            problems.append(problem)
    for history in HISTORY_COLUMNS:
        value = raw.get(history.name, "")
        if value != "" and (problem := check_value(history, value)) is not None:
            problems.append(problem)
    return problems


def raw_to_encounter(raw: Mapping[str, str]) -> dict[str, Any]:
    """The request model's values of a valid raw row (the inverse of ``encounter_to_raw``): '?' becomes
    None, codes and counts become integers; absent history features are 0 (a first visit)."""
    out: dict[str, Any] = {}
    for col in FEATURE_COLUMNS:
        value = raw[col.name]
        out[col.name] = None if value == MISSING else int(value) if col.is_integer else value
    for history in HISTORY_FEATURES:
        out[history.name] = int(raw.get(history.name) or 0)
    return out


def _example(**values: Any) -> dict[str, Any]:
    """An encounter in the request model's terms: no medications unless named, history of a first visit."""
    example: dict[str, Any] = dict.fromkeys(MEDICATIONS, "No")
    example.update({"weight": None, "payer_code": None, "max_glu_serum": "None", "A1Cresult": "None"})
    example.update(dict.fromkeys(HISTORY_FEATURE_NAMES, 0))
    example.update(values)
    return {name: example[name] for name in MODEL_INPUT_NAMES}


# Made-up but typical patients (not rows of the data set): OpenAPI examples, the UI's one-click examples
# and the service's smoke prediction all use them. Tested to pass the request model.
EXAMPLE_ENCOUNTERS: dict[str, dict[str, Any]] = {
    "Heart failure, first visit": _example(
        race="Caucasian",
        gender="Female",
        age="[70-80)",
        admission_type_id=1,
        discharge_disposition_id=1,
        admission_source_id=7,
        time_in_hospital=4,
        payer_code="MC",
        medical_specialty="InternalMedicine",
        num_lab_procedures=45,
        num_procedures=1,
        num_medications=16,
        number_outpatient=0,
        number_emergency=0,
        number_inpatient=0,
        diag_1="428",
        diag_2="427",
        diag_3="250",
        number_diagnoses=9,
        insulin="Steady",
        metformin="Steady",
        change="No",
        diabetesMed="Yes",
    ),
    "Frequent admissions, insulin changed": _example(
        race="AfricanAmerican",
        gender="Male",
        age="[60-70)",
        admission_type_id=1,
        discharge_disposition_id=3,
        admission_source_id=7,
        time_in_hospital=8,
        payer_code="MD",
        medical_specialty=None,
        num_lab_procedures=62,
        num_procedures=0,
        num_medications=24,
        number_outpatient=2,
        number_emergency=3,
        number_inpatient=4,
        diag_1="250.13",
        diag_2="403",
        diag_3="585",
        number_diagnoses=9,
        A1Cresult=">8",
        insulin="Up",
        change="Ch",
        diabetesMed="Yes",
        prior_encounters=4,
        prior_readmissions=3,
        prior_early_readmissions=2,
        previous_number_inpatient=3,
        previous_readmission=1,
        previous_early_readmission=1,
    ),
    "Elective surgery, short stay": _example(
        race="Hispanic",
        gender="Male",
        age="[50-60)",
        admission_type_id=3,
        discharge_disposition_id=1,
        admission_source_id=1,
        time_in_hospital=2,
        payer_code="BC",
        medical_specialty="Orthopedics",
        num_lab_procedures=20,
        num_procedures=2,
        num_medications=12,
        number_outpatient=0,
        number_emergency=0,
        number_inpatient=0,
        diag_1="715",
        diag_2="250",
        diag_3="V45",
        number_diagnoses=5,
        metformin="Steady",
        change="No",
        diabetesMed="Yes",
    ),
}
