"""Per-record attributes in ECG-QA's vocabulary, derived from PTB-XL labels, metadata and measurements.

A record is only asked about what its source actually covers: attributes built from official metadata
columns (noise, stage of infarction, extra systoles, heart axis) are None when the record has no official
row, and numeric features only exist where they were measured. None means "not asked", never "no".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ecgllm.io.leads import STANDARD_12, canonical_lead

# PTB-XL statement -> ECG-QA name where it is not simply the lowercased description. Statements that
# ECG-QA never asks about (NORM has its own template; RVH, WPW, 2AVB, ...) map to None.
SCP_NAME_OVERRIDES: dict[str, str | None] = {
    "DIG": "digitalis effect", "NORM": None, "LOWT": "low amplitude t-wave",
    "IMI": "myocardial infarction in inferior leads", "ASMI": "myocardial infarction in anteroseptal leads",
    "ILMI": "myocardial infarction in inferolateral leads", "AMI": "myocardial infarction in anterior leads",
    "ALMI": "myocardial infarction in anterolateral leads", "LMI": "myocardial infarction in lateral leads",
    "IPLMI": "myocardial infarction in inferoposterolateral leads",
    "IPMI": "myocardial infarction in inferoposterior leads", "PMI": "myocardial infarction in posterior leads",
    "BIGU": "bigeminal pattern (unknown origin, supraventricular, or ventricular)",
    "RVH": None, "ANEUR": None, "EL": None, "WPW": None, "SEHYP": None, "3AVB": None, "2AVB": None,
    "PRC(S)": None, "SVARR": None, "PSVT": None, "TRIGU": None,
}
SUPERCLASS_NAMES = {"CD": "conduction disturbance", "HYP": "hypertrophy", "MI": "myocardial infarction",
                    "STTC": "st/t change"}
NOISE_COLUMNS = {"baseline_drift": "baseline drift", "static_noise": "static noise", "burst_noise": "burst noise",
                 "electrodes_problems": "electrodes problems"}
STAGES = {"I": "early stage of myocardial infarction", "II": "middle stage of myocardial infarction",
          "III": "old stage of myocardial infarction"}
UNKNOWN_STAGE = "unknown stage of myocardial infarction"
# PTB-XL heart_axis codes as ECG-QA names them (the codes read literally: LAD = "left axis deviation").
# Note: PTB-XL follows the German axis types, where LAD ("Linkstyp", −30°..+30°) is a normal axis in the
# English convention; ECG-QA's vocabulary follows the codes, and so do we, to stay comparable.
HEART_AXIS_NAMES = {"MID": "normal heart axis", "LAD": "left axis deviation", "ALAD": "left axis deviation",
                    "AXL": "left axis deviation", "RAD": "right axis deviation", "ARAD": "right axis deviation",
                    "AXR": "right axis deviation", "SAG": "extreme axis deviation"}
# Standard adult normal ranges (ms). ECG-QA's own thresholds are not in the published material we have.
NORMAL_RANGES = {"rr interval": (600.0, 1000.0), "p duration": (60.0, 120.0), "pr interval": (120.0, 200.0),
                 "qrs duration": (60.0, 110.0), "qt interval": (300.0, 450.0), "qt corrected": (350.0, 450.0)}
MEASUREMENT_COLUMNS = {"rr interval": "rr_ms", "p duration": "p_ms", "pr interval": "pr_ms",
                       "qrs duration": "qrs_ms", "qt interval": "qt_ms", "qt corrected": "qtc_bazett_ms"}
RANGE_NAMES = ("below the normal range", "within the normal range", "above the normal range")
_LEAD_ORDER = [lead.upper() for lead in STANDARD_12]


def scp_name(code: str, description: str) -> str | None:
    if code in SCP_NAME_OVERRIDES:
        return SCP_NAME_OVERRIDES[code]
    return description.lower()


def parse_lead_spec(text: object) -> frozenset[str] | None:
    """Leads named by a PTB-XL noise column; None when the column is empty.

    Handles ranges in the standard lead order (" , I-AVF,  ", "I - V1", "v3-4"), lists ("V3,V4-V6"),
    and "alles" (all leads). An entry that names no lead ("mittel", "noisy recording") means noise in
    the recording but in no particular lead: an empty set. The official ECG-QA answers read it that way.
    """
    if not isinstance(text, str) or not text.strip(" ,"):
        return None
    leads: set[str] = set()
    text = re.sub(r"\s*-\s*", "-", text)
    previous = ""
    for token in re.split(r"[,\s]+", text.strip()):
        token = token.strip("?").upper()
        if token.isdigit() and previous.startswith("V"):
            token = "V" + token  # "v1,2" continues the V series
        previous = token or previous
        if token == "ALLES":
            leads.update(STANDARD_12)
        elif "-" in token:
            a, _, b = token.partition("-")
            if a.startswith("V") and b.isdigit():
                b = "V" + b  # "V3-4" means V3 to V4
            if a in _LEAD_ORDER and b in _LEAD_ORDER and _LEAD_ORDER.index(a) <= _LEAD_ORDER.index(b):
                leads.update(STANDARD_12[_LEAD_ORDER.index(a):_LEAD_ORDER.index(b) + 1])
        elif token and canonical_lead(token) in STANDARD_12:
            leads.add(canonical_lead(token))
    return frozenset(leads)


def parse_stages(*values: object) -> frozenset[str] | None:
    names: set[str] = set()
    for value in values:
        if not isinstance(value, str) or not value.strip():
            continue
        if value.strip().lower() == "unknown":
            names.add(UNKNOWN_STAGE)
            continue
        for roman in re.findall(r"I{1,3}", value.replace("Stadium", "")):
            names.add(STAGES[roman])
    return frozenset(names)


def parse_extra_beats(value: object) -> frozenset[str]:
    if not isinstance(value, str) or not value.strip():
        return frozenset()
    text = value.upper().replace("ALLES", "")  # "alles" (all leads) is not a beat type
    kinds = set()
    if "SVES" in text:
        kinds.add("supraventricular extrasystoles")
    if re.search(r"(?<!S)VES", text):
        kinds.add("ventricular extrasystoles")
    if re.search(r"(?<![SV])ES|^\d", text):
        kinds.add("extrasystoles")
    return frozenset(kinds)


def range_of(feature: str, value: float, ranges: dict[str, tuple[float, float]] = NORMAL_RANGES) -> str:
    lo, hi = ranges[feature]
    return RANGE_NAMES[0] if value < lo else RANGE_NAMES[2] if value > hi else RANGE_NAMES[1]


@dataclass
class RecordAttributes:
    """What can be asked about one record, in ECG-QA's words."""

    ecg_id: int
    patient_id: int | None
    recorded: str | None
    statements: dict[str, float]                # ECG-QA statement name -> likelihood (NaN: presence only)
    superclasses: frozenset[str]
    normal: bool
    noise: dict[str, frozenset[str]] | None     # noise name -> affected leads; None: metadata unknown
    stages: frozenset[str] | None
    extra_systoles: frozenset[str] | None
    heart_axis: str | None
    numeric: dict[str, str] = field(default_factory=dict)   # feature -> range name

    @property
    def likelihood_known(self) -> bool:
        return all(not math.isnan(p) for p in self.statements.values())


def build_attributes(ptbxl, measurements: pd.DataFrame | None = None,
                     normal_ranges: dict[str, tuple[float, float]] | None = None) -> dict[int, RecordAttributes]:
    """Attributes of every record of a `PTBXL` (``measurements``: table indexed by ecg_id with the
    columns of `ecgllm.signal.Measurements`, e.g. from `measure_records`). Numeric features use
    ``normal_ranges`` (default: the ranges fitted to official ECG-QA training answers, see
    `ecgllm.datasets.ecgqa_ranges`)."""
    if normal_ranges is None:
        from ecgllm.datasets.ecgqa_ranges import load_ecgqa_ranges

        normal_ranges = load_ecgqa_ranges()
    statements = ptbxl.statements
    names = {code: scp_name(code, statements.at[code, "description"]) for code in statements.index}
    table = ptbxl.table
    official = table["has_official_metadata"].to_numpy(dtype=bool)
    out: dict[int, RecordAttributes] = {}
    measured = measurements.to_dict(orient="index") if measurements is not None else {}
    for row_index, (ecg_id, row) in enumerate(table.iterrows()):
        codes = row["scp_codes"]
        named = {names[c]: p for c, p in codes.items() if names.get(c)}
        supers = frozenset(SUPERCLASS_NAMES[s] for s in ptbxl.labels(int(ecg_id), "superclass") if s in SUPERCLASS_NAMES)
        has_meta = bool(official[row_index])
        noise = stages = extra = axis = None
        if has_meta:
            noise = {}
            for column, name in NOISE_COLUMNS.items():
                leads = parse_lead_spec(row.get(column))
                if leads is not None:
                    noise[name] = leads
            stages = parse_stages(row.get("infarction_stadium1"), row.get("infarction_stadium2"))
            extra = parse_extra_beats(row.get("extra_beats"))
            axis = HEART_AXIS_NAMES.get(str(row.get("heart_axis")))
        numeric = {}
        for feature, column in MEASUREMENT_COLUMNS.items():
            value = measured.get(ecg_id, {}).get(column)
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                numeric[feature] = range_of(feature, float(value), normal_ranges)
        patient = row.get("patient_id")
        out[int(ecg_id)] = RecordAttributes(
            ecg_id=int(ecg_id), patient_id=None if pd.isna(patient) else int(patient),
            recorded=row.get("recording_date") if isinstance(row.get("recording_date"), str) else None,
            statements=named, superclasses=supers, normal="NORM" in codes, noise=noise, stages=stages,
            extra_systoles=extra, heart_axis=axis, numeric=numeric)
    return out


def statement_names(statements: pd.DataFrame) -> dict[str, str]:
    """A readable name for every PTB-XL statement and superclass code, in ECG-QA's words where ECG-QA names it
    (so that a label's name matches how questions ask about it), else the lower-cased SCP description."""
    names = {str(code): scp_name(str(code), str(row["description"])) or str(row["description"]).lower()
             for code, row in statements.iterrows()}
    names.update(SUPERCLASS_NAMES)
    names["NORM"] = "normal ecg"
    return names
