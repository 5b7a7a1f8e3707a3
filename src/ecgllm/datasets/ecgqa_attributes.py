"""Per-record attributes in ECG-QA's vocabulary, derived from PTB-XL the way ECG-QA derived them.

The rules follow the official ECG-QA (PTB-XL) release, checked against its train/valid samples
(``benchmarks/ecgqa_agreement.py``):

* SCP codes: a code is *present* at any likelihood (0.0 included: PTB-XL writes 0 for "stated, likelihood
  unknown"); "excluding uncertain symptoms" keeps likelihood 0 or 100. Eleven codes never appear in ECG-QA
  (`EXCLUDED_CODES`). The superclasses keep ECG-QA's quirk of counting only codes made of letters alone.
* Lead statements of 13 form codes: read from the report text (`ecgllm.datasets.ecgqa_leads`).
* Noise: a noise is present when its PTB-XL column names at least one lead.
* Extra systoles, stage of infarction: ECG-QA's readings of ``extra_beats`` and the infarction stadium columns.
* Heart axis and numeric features: measured from the signal (`ecgllm.datasets.ecgqa_numeric`), not read
  from PTB-XL's ``heart_axis`` column; undefined when the leads they need are noisy.

A record is only asked about what its source covers: attributes built from official metadata columns are None
when the record has no official row, numeric features and the axis only exist where they were measured.
None means "not asked", never "no".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ecgllm.datasets.ecgqa_leads import FORM_WITH_LEADS, form_leads, lead_positions, normalize_report

# ---------------------------------------------------------------------------------------- SCP codes
# Every PTB-XL statement in ECG-QA's words (PTB-XL order). ECG-QA uses the lower-cased description except
# where named here; the 11 codes of EXCLUDED_CODES keep a name for labels but never appear in questions.
SCP_NAMES: dict[str, str] = {
    "NDT": "non-diagnostic t abnormalities", "NST_": "non-specific st changes", "DIG": "digitalis effect",
    "LNGQT": "long qt-interval", "NORM": "normal ecg", "IMI": "myocardial infarction in inferior leads",
    "ASMI": "myocardial infarction in anteroseptal leads", "LVH": "left ventricular hypertrophy",
    "LAFB": "left anterior fascicular block", "ISC_": "non-specific ischemic",
    "IRBBB": "incomplete right bundle branch block", "1AVB": "first degree av block",
    "IVCD": "non-specific intraventricular conduction disturbance (block)", "ISCAL": "ischemic in anterolateral leads",
    "CRBBB": "complete right bundle branch block", "CLBBB": "complete left bundle branch block",
    "ILMI": "myocardial infarction in inferolateral leads", "LAO/LAE": "left atrial overload/enlargement",
    "AMI": "myocardial infarction in anterior leads", "ALMI": "myocardial infarction in anterolateral leads",
    "ISCIN": "ischemic in inferior leads", "INJAS": "subendocardial injury in anteroseptal leads",
    "LMI": "myocardial infarction in lateral leads", "ISCIL": "ischemic in inferolateral leads",
    "LPFB": "left posterior fascicular block", "ISCAS": "ischemic in anteroseptal leads",
    "INJAL": "subendocardial injury in anterolateral leads", "ISCLA": "ischemic in lateral leads",
    "RVH": "right ventricular hypertrophy", "ANEUR": "st-t changes compatible with ventricular aneurysm",
    "RAO/RAE": "right atrial overload/enlargement", "EL": "electrolytic disturbance or drug (former EDIS)",
    "WPW": "wolff-parkinson-white syndrome", "ILBBB": "incomplete left bundle branch block",
    "IPLMI": "myocardial infarction in inferoposterolateral leads", "ISCAN": "ischemic in anterior leads",
    "IPMI": "myocardial infarction in inferoposterior leads", "SEHYP": "septal hypertrophy",
    "INJIN": "subendocardial injury in inferior leads", "INJLA": "subendocardial injury in lateral leads",
    "PMI": "myocardial infarction in posterior leads", "3AVB": "third degree av block",
    "INJIL": "subendocardial injury in inferolateral leads", "2AVB": "second degree av block",
    "ABQRS": "abnormal qrs", "PVC": "ventricular premature complex", "STD_": "non-specific st depression",
    "VCLVH": "voltage criteria (qrs) for left ventricular hypertrophy", "QWAVE": "q waves present",
    "LOWT": "low amplitude t-wave", "NT_": "non-specific t-wave changes", "PAC": "atrial premature complex",
    "LPR": "prolonged pr interval", "INVT": "inverted t-waves",
    "LVOLT": "low qrs voltages in the frontal and horizontal leads", "HVOLT": "high qrs voltage",
    "TAB_": "t-wave abnormality", "STE_": "non-specific st elevation", "PRC(S)": "premature complex(es)",
    "SR": "sinus rhythm", "AFIB": "atrial fibrillation", "STACH": "sinus tachycardia", "SARRH": "sinus arrhythmia",
    "SBRAD": "sinus bradycardia", "PACE": "normal functioning artificial pacemaker",
    "SVARR": "supraventricular arrhythmia",
    "BIGU": "bigeminal pattern (unknown origin, supraventricular, or ventricular)", "AFLT": "atrial flutter",
    "SVTAC": "supraventricular tachycardia", "PSVT": "paroxysmal supraventricular tachycardia",
    "TRIGU": "trigeminal pattern (unknown origin, supraventricular, or ventricular)",
}
# Never asked about in the ECG-QA release (a fixed list, not a frequency cut: rarer codes are kept).
EXCLUDED_CODES = frozenset({"2AVB", "3AVB", "WPW", "RVH", "SEHYP", "ANEUR", "EL", "SVARR", "PSVT", "TRIGU", "PRC(S)"})
_DIAGNOSTIC_ALL = ("NDT", "NST_", "DIG", "LNGQT", "NORM", "IMI", "ASMI", "LVH", "LAFB", "ISC_", "IRBBB", "1AVB",
                   "IVCD", "ISCAL", "CRBBB", "CLBBB", "ILMI", "LAO/LAE", "AMI", "ALMI", "ISCIN", "INJAS", "LMI",
                   "ISCIL", "LPFB", "ISCAS", "INJAL", "ISCLA", "RVH", "ANEUR", "RAO/RAE", "EL", "WPW", "ILBBB",
                   "IPLMI", "ISCAN", "IPMI", "SEHYP", "INJIN", "INJLA", "PMI", "3AVB", "INJIL", "2AVB")
# The answer universes of ECG-QA's templates (PTB-XL statement order).
DIAGNOSTIC_CODES = tuple(c for c in _DIAGNOSTIC_ALL if c != "NORM" and c not in EXCLUDED_CODES)       # 36
FORM_CODES = ("NDT", "NST_", "DIG", "LNGQT", "ABQRS", "PVC", "STD_", "VCLVH", "QWAVE", "LOWT", "NT_", "PAC", "LPR",
              "INVT", "LVOLT", "HVOLT", "TAB_", "STE_")                                                  # 18
RHYTHM_CODES = ("SR", "AFIB", "STACH", "SARRH", "SBRAD", "PACE", "BIGU", "AFLT", "SVTAC")               # 9
ALL_CODES = tuple(c for c in SCP_NAMES if c != "NORM" and c not in EXCLUDED_CODES)                       # 59
FORM_LEAD_CODES = FORM_WITH_LEADS                                                                        # 13
DIAGNOSTIC_CLASS = {c: "CD" for c in ("LAFB", "IRBBB", "1AVB", "IVCD", "CRBBB", "CLBBB", "LPFB", "WPW", "ILBBB",
                                      "3AVB", "2AVB")}
DIAGNOSTIC_CLASS.update({c: "HYP" for c in ("LVH", "LAO/LAE", "RVH", "RAO/RAE", "SEHYP")})
DIAGNOSTIC_CLASS.update({c: "MI" for c in ("IMI", "ASMI", "ILMI", "AMI", "ALMI", "INJAS", "LMI", "INJAL", "IPLMI",
                                           "IPMI", "INJIN", "INJLA", "PMI", "INJIL")})
DIAGNOSTIC_CLASS.update({c: "STTC" for c in ("NDT", "NST_", "DIG", "LNGQT", "ISC_", "ISCAL", "ISCIN", "ISCIL",
                                             "ISCAS", "ISCLA", "ANEUR", "EL", "ISCAN")})
SUPERCLASS_NAMES = {"CD": "conduction disturbance", "HYP": "hypertrophy", "MI": "myocardial infarction",
                    "STTC": "st/t change"}
# ECG-QA found codes with the pattern '[a-zA-Z]*' on the raw scp_codes text, so a code with a digit, slash or
# underscore (1AVB, LAO/LAE, NST_, ...) never counted towards its superclass. Reproduced on purpose.
SUPERCLASS_CODES = {s: frozenset(c for c, k in DIAGNOSTIC_CLASS.items() if k == s and c.isalpha())
                    for s in SUPERCLASS_NAMES}
# Name overrides kept for modules that label PTB-XL codes (None: a code ECG-QA never asks about).
SCP_NAME_OVERRIDES: dict[str, str | None] = {c: (None if c in EXCLUDED_CODES or c == "NORM" else n)
                                             for c, n in SCP_NAMES.items()}
CODE_OF_NAME = {n: c for c, n in SCP_NAMES.items()}

# ------------------------------------------------------------------------------------ other attributes
NOISE_COLUMNS = {"baseline_drift": "baseline drift", "static_noise": "static noise", "burst_noise": "burst noise",
                 "electrodes_problems": "electrodes problems"}
NOISE_NAMES = tuple(NOISE_COLUMNS.values())
NO_INFARCTION = "none of myocardial infarction"
UNKNOWN_STAGE = "unknown stage of myocardial infarction"
STAGES = {"I": "early stage of myocardial infarction", "II": "middle stage of myocardial infarction",
          "III": "old stage of myocardial infarction"}
STAGE_NAMES = (NO_INFARCTION, UNKNOWN_STAGE, *STAGES.values())
EXTRA_SYSTOLE_TYPES = {"es": "extrasystoles", "ves": "ventricular extrasystoles",
                       "sves": "supraventricular extrasystoles"}
HEART_AXIS_CLASSES = ("normal heart axis", "left axis deviation", "right axis deviation", "extreme axis deviation")
# PTB-XL's heart_axis column in ECG-QA words, for modules that describe the column. ECG-QA's own axis
# answers come from the signal (`axis_class`), not from this column.
HEART_AXIS_NAMES = {"MID": "normal heart axis", "LAD": "left axis deviation", "ALAD": "left axis deviation",
                    "AXL": "left axis deviation", "RAD": "right axis deviation", "ARAD": "right axis deviation",
                    "AXR": "right axis deviation", "SAG": "extreme axis deviation"}
RANGE_NAMES = ("below the normal range", "within the normal range", "above the normal range")
RANGES_JSON = Path(__file__).resolve().parents[1] / "data" / "ecgqa_normal_ranges.json"


def load_ecgqa_ranges() -> dict[str, tuple[float, float]]:
    """ECG-QA's inclusive normal ranges in ms, from the packaged file, their one source (its code's ranges; p
    duration has no lower bound; the QTc upper bound is a choice between the code's 555 ms = 430/sqrt(0.6) and
    the 450 ms the comparison answers need, which `ecgllm.datasets.ecgqa_ranges` fits and checks). JSON has no
    infinity: an unbounded edge is written as null."""
    data = json.loads(RANGES_JSON.read_text())
    return {feature: (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))
            for feature, (lo, hi) in ((f, v["range_ms"]) for f, v in data["features"].items())}


NORMAL_RANGES = load_ecgqa_ranges()
FEATURES = tuple(NORMAL_RANGES)
# Columns of a measurement table: ECG-QA's own (NeuroKit2, lead II, seconds; `ecgqa_numeric`) first, then
# the ms columns of `ecgllm.signal.Measurements` (e.g. from `ecgllm data measure`) as a fallback.
ECGQA_COLUMNS = {"rr interval": "rr_s", "p duration": "p_s", "pr interval": "pr_s", "qrs duration": "qrs_s",
                 "qt interval": "qt_s", "qt corrected": "qtc_s"}
MEASUREMENT_COLUMNS = {"rr interval": "rr_ms", "p duration": "p_ms", "pr interval": "pr_ms",
                       "qrs duration": "qrs_ms", "qt interval": "qt_ms", "qt corrected": "qtc_bazett_ms"}


def scp_name(code: str, description: str) -> str | None:
    """ECG-QA's name of a PTB-XL code; None for NORM and the codes ECG-QA never asks about."""
    if code in SCP_NAME_OVERRIDES:
        return SCP_NAME_OVERRIDES[code]
    return description.lower()


def parse_lead_spec(text: object) -> frozenset[str] | None:
    """Leads named by a PTB-XL noise column (``" , I-AVF,  "``, ``"v1-3"``, ``"alles"``).

    None when the column names no lead (empty, ``"mittel"``, ``"noisy recording"``): ECG-QA counts such a
    noise as absent.
    """
    if not isinstance(text, str):
        return None
    return lead_positions(text.lower())


def parse_stages(stadium1: object, stadium2: object, fix_typo: bool = False) -> frozenset[str]:
    """ECG-QA's stage flags from ``infarction_stadium1``/``infarction_stadium2``.

    ``stadium2`` wins when given. ECG-QA's code misspelt "Stadium III" in ``stadium1`` ("Staidum III"), so
    records with only ``stadium1 == "Stadium III"`` carry no stage; ``fix_typo=True`` reads them as old.
    """
    s1 = stadium1.strip() if isinstance(stadium1, str) else None
    s2 = stadium2.strip() if isinstance(stadium2, str) else None
    flags: set[str] = set()
    if s1 is None and s2 is None:
        flags.add(NO_INFARCTION)
    if s1 == "unknown":
        flags.add(UNKNOWN_STAGE)
    stage = s2 if s2 is not None else s1
    if stage in ("Stadium I", "Stadium I-II"):
        flags.add(STAGES["I"])
    elif stage in ("Stadium II", "Stadium II-III"):
        flags.add(STAGES["II"])
    elif stage == "Stadium III" and (s2 is not None or fix_typo):
        flags.add(STAGES["III"])
    return frozenset(flags)


def parse_extra_beats(value: object) -> tuple[frozenset[str], frozenset[str] | None]:
    """ECG-QA's reading of ``extra_beats``: (types present, leads named or None).

    ``"1es"`` -> extrasystoles; ``"3ves, sves"`` -> ventricular and supraventricular; ``"1,alles"`` reads as
    ``"es1,alles"`` (a leading count without a type means plain extrasystoles) with every lead.
    """
    text = value.lower() if isinstance(value, str) else ""
    if text[:1].isdigit() and not any(text[k:].startswith(t) for k in (1, 2) for t in ("es", "ves", "sves")):
        text = "es" + text
    leads = lead_positions(text) if text else None
    types: set[str] = set()
    for item in (part.strip() for part in re.split(r"[,();]", text)):
        if "es" not in item or item == "alles":
            continue
        kind = re.sub(r"^\d{1,2}|\d{1,2}$", "", item)  # "3ves" -> ves, "ves1" -> ves, "sves" -> sves
        if kind in EXTRA_SYSTOLE_TYPES:
            types.add(EXTRA_SYSTOLE_TYPES[kind])
    return frozenset(types), leads


def range_of(feature: str, value: float, ranges: dict[str, tuple[float, float]] = NORMAL_RANGES) -> str:
    """below / within / above the normal range (inclusive bounds, in the unit of ``ranges``)."""
    lo, hi = ranges[feature]
    return RANGE_NAMES[0] if value < lo else RANGE_NAMES[2] if value > hi else RANGE_NAMES[1]


def axis_class(degrees: float) -> str:
    """ECG-QA's axis classes: normal [-30, 90), left [-90, -30), right [90, 180], extreme [-180, -90)."""
    if -30 <= degrees < 90:
        return HEART_AXIS_CLASSES[0]
    if -90 <= degrees < -30:
        return HEART_AXIS_CLASSES[1]
    if degrees >= 90:
        return HEART_AXIS_CLASSES[2]
    return HEART_AXIS_CLASSES[3]


@dataclass
class RecordAttributes:
    """What can be asked about one record, in ECG-QA's words."""

    ecg_id: int
    patient_id: int | None
    recorded: str | None
    statements: dict[str, float]                # ECG-QA name -> likelihood of the 59 askable codes (NaN: unknown)
    superclasses: frozenset[str]
    normal: bool
    noise: dict[str, frozenset[str]] | None     # present noise -> its leads; None: metadata unknown
    stages: frozenset[str] | None               # stage flags (`parse_stages`); None: metadata unknown
    extra_systoles: frozenset[str] | None       # extra-systole types present; None: metadata unknown
    heart_axis: str | None                      # measured axis class; None: undefined or not measured
    numeric: dict[str, str] = field(default_factory=dict)   # feature -> range name
    codes: dict[str, float] = field(default_factory=dict)   # every PTB-XL code -> likelihood
    form_leads: dict[str, frozenset[str]] | None = None     # present lead-form statement -> leads; None: no report
    extra_systole_leads: frozenset[str] | None = None       # leads named by extra_beats
    numeric_values: dict[str, float] = field(default_factory=dict)  # feature -> seconds
    measured: bool = False                                  # a measurement row exists (undefined != unmeasured)
    axis_measured: bool = False                             # the axis was measured (undefined != unmeasured)

    @property
    def likelihood_known(self) -> bool:
        return all(not math.isnan(p) for p in self.statements.values())

    @property
    def any_extra_systole(self) -> bool | None:
        """ECG-QA's "any kind of extra systoles": a type present *and* leads named (its code's rule)."""
        if self.extra_systoles is None:
            return None
        return bool(self.extra_systoles) and self.extra_systole_leads is not None


def _measured(row: dict, feature: str) -> float | None:
    """Seconds of ``feature`` from a measurement row (ECG-QA columns first, ms columns as fallback)."""
    for column, scale in ((ECGQA_COLUMNS[feature], 1.0), (MEASUREMENT_COLUMNS[feature], 1e-3)):
        value = row.get(column)
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            return float(value) * scale
    return None


def _axis_measured(row: dict) -> bool:
    """Was the axis measured for this row (ECG-QA's ``axis_measured`` flag, or any axis column present)?"""
    flag = row.get("axis_measured")
    if flag is not None and not (isinstance(flag, float) and np.isnan(flag)):
        return bool(flag)
    return "axis_ecgqa_deg" in row or "axis_deg" in row


def build_attributes(ptbxl, measurements: pd.DataFrame | None = None,
                     normal_ranges: dict[str, tuple[float, float]] | None = None,
                     translate_german: bool = True, fix_stage_typo: bool = False) -> dict[int, RecordAttributes]:
    """Attributes of every record of a `PTBXL`.

    ``measurements``: table indexed by ecg_id, either ECG-QA's features (`ecgllm.datasets.ecgqa_numeric`:
    ``rr_s`` ... ``qtc_s``, ``axis_ecgqa_deg``; seconds, degrees) or `ecgllm.signal.Measurements` columns
    (ms, ``axis_deg``).
    Numeric ranges use ``normal_ranges`` in ms (default: `load_ecgqa_ranges`, ECG-QA's thresholds). The
    features and the axis are dropped where the leads they are measured on are noisy (ECG-QA's rule: lead II
    for the features, I and aVF for the axis). PTB-XL's heart_axis column is not used: ECG-QA's axis classes
    come from the signal and disagree with the column (a record without a measured axis gets no axis questions).
    """
    if normal_ranges is None:
        normal_ranges = load_ecgqa_ranges()
    table = ptbxl.table
    official = table["has_official_metadata"].to_numpy(dtype=bool)
    measured = measurements.to_dict(orient="index") if measurements is not None else {}
    has_report = "report" in table.columns
    out: dict[int, RecordAttributes] = {}
    for row_index, (ecg_id, row) in enumerate(table.iterrows()):
        ecg_id = int(ecg_id)
        codes: dict[str, float] = dict(row["scp_codes"])
        named = {SCP_NAMES[c]: float(p) for c, p in codes.items() if c in SCP_NAMES and c in ALL_CODES}
        supers = frozenset(SUPERCLASS_NAMES[s] for s, members in SUPERCLASS_CODES.items() if members & codes.keys())
        noise = stages = extra = None
        extra_leads: frozenset[str] | None = None
        dirty: set[str] = set()
        if official[row_index]:
            noise = record_noise(row)
            for leads in noise.values():
                dirty |= leads
            stages = parse_stages(row.get("infarction_stadium1"), row.get("infarction_stadium2"), fix_stage_typo)
            extra, extra_leads = parse_extra_beats(row.get("extra_beats"))
            if extra and extra_leads:
                dirty |= extra_leads
        leads_of = None
        report = row.get("report") if has_report else None
        if isinstance(report, str):
            text = normalize_report(report, translate_german)
            leads_of = {SCP_NAMES[c]: form_leads(text, c) for c in FORM_LEAD_CODES if c in codes}
        values = measured.get(ecg_id, {})
        numeric: dict[str, str] = {}
        numeric_values: dict[str, float] = {}
        if "II" not in dirty:
            for feature in FEATURES:
                seconds = _measured(values, feature)
                if seconds is not None:
                    numeric_values[feature] = seconds
                    numeric[feature] = range_of(feature, seconds * 1000.0, normal_ranges)
        axis = None
        degrees = values.get("axis_ecgqa_deg")  # ECG-QA's method; ecgllm's own axis as a fallback
        if degrees is None or (isinstance(degrees, float) and np.isnan(degrees)):
            degrees = values.get("axis_deg")
        if degrees is not None and not (isinstance(degrees, float) and np.isnan(degrees)):
            axis = None if dirty & {"I", "aVF"} else axis_class(float(degrees))
        patient = row.get("patient_id")
        out[ecg_id] = RecordAttributes(
            ecg_id=ecg_id, patient_id=None if pd.isna(patient) else int(patient),
            recorded=row.get("recording_date") if isinstance(row.get("recording_date"), str) else None,
            statements=named, superclasses=supers, normal="NORM" in codes, noise=noise, stages=stages,
            extra_systoles=extra, heart_axis=axis, numeric=numeric, codes=codes, form_leads=leads_of,
            extra_systole_leads=extra_leads, numeric_values=numeric_values, measured=ecg_id in measured,
            axis_measured=_axis_measured(values))
    return out


def statement_names(statements: pd.DataFrame) -> dict[str, str]:
    """A readable name for every PTB-XL statement and superclass code, in ECG-QA's words where ECG-QA names it
    (so that a label's name matches how questions ask about it), else the lower-cased SCP description."""
    names = {str(code): scp_name(str(code), str(row["description"])) or str(row["description"]).lower()
             for code, row in statements.iterrows()}
    names.update(SUPERCLASS_NAMES)
    names["NORM"] = "normal ecg"
    return names


def record_noise(row) -> dict[str, frozenset[str]]:
    """The noises a PTB-XL row's noise columns name, each with its leads, read as ECG-QA reads them
    (`parse_lead_spec`: a column naming no lead is no noise). Only meaningful for rows with official metadata."""
    noise = {}
    for column, name in NOISE_COLUMNS.items():
        leads = parse_lead_spec(row.get(column))
        if leads is not None:
            noise[name] = leads
    return noise


def noise_leads_table(table: pd.DataFrame, ecg_ids, leads: list[str]) -> np.ndarray:
    """[E, leads, 4] booleans: which leads each noise of `record_noise` covers (`NOISE_COLUMNS` order). ``table``
    is `PTBXL.table`; records without official metadata have unknown noise and must be left out by the caller."""
    out = np.zeros((len(ecg_ids), len(leads), len(NOISE_COLUMNS)), dtype=bool)
    position = {lead: i for i, lead in enumerate(leads)}
    kinds = {name: k for k, name in enumerate(NOISE_COLUMNS.values())}
    for row, ecg_id in enumerate(ecg_ids):
        for name, named_leads in record_noise(table.loc[int(ecg_id)]).items():
            for lead in named_leads & position.keys():
                out[row, position[lead], kinds[name]] = True
    return out
