"""An ECG's measured intervals and heart axis as one line of text the model reads beside the ECG's tokens.

Why: the frozen encoder was trained on statements, and its tokens carry little of the interval lengths that ECG-QA's
numeric questions ask about (a model reading only them answered those questions as well with another patient's ECG,
docs/results/ecgqa_evidence.md). A measurement is read from the ECG too, so the note is part of the ECG: another
patient's ECG brings its own note, and a prompt without an ECG has none.

The values are ECG-QA's own features (`ecgllm.datasets.ecgqa_numeric.ecgqa_measure`: NeuroKit2 on lead II at 500 Hz,
the axis from leads I and aVF), given as ECG-QA's classes in its words (ranges of `load_ecgqa_ranges`, axis classes of
`axis_class`), so an answer can be read off the note. A question gets notes only when it asks about a measurement
(`asks_for_measurements`): other questions stay as short as before, which keeps training and answers fast.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np

from ecgllm.datasets.ecgqa_attributes import ECGQA_COLUMNS as FEATURE_COLUMNS  # feature -> column, seconds
from ecgllm.datasets.ecgqa_attributes import FEATURES, RANGE_NAMES, axis_class, load_ecgqa_ranges, range_of
from ecgllm.datasets.ecgqa_ranges import NUMERIC_COMPARISONS

AXIS_COLUMN = "axis_ecgqa_deg"
META_KEY = "ecgqa_features"  # an ECG's measurement row, when its record's row of a table is known
# Words of every ECG-QA numeric-feature and heart-axis question, template and paraphrase (checked in the tests:
# each of those wordings matches, no other template's pattern does), and of a user's own questions about them. A
# few label questions match as well once their values are filled in ("voltage criteria (qrs) for left ventricular
# hypertrophy"): they get notes in training and in answers alike, which costs tokens and changes nothing else.
_ASKS = re.compile(r"interval|duration|numeric|axis|deviat|\bqtc?\b|\bqrs\b|\brr\b|\bpr\b|measure|\bvalues?\b|"
                   r"normal range|heart rate", re.IGNORECASE)
# What a note says, by the version a checkpoint was trained with (`model.measurement_note`; 0 is no notes):
# 1 lists the features below and above the normal range; 2 adds those within it. Why 2: ECG-QA asks which features
# fall within the normal range as often as below or above it, and a model trained on version 1 answered those by
# copying a list from the note instead of taking the measured features that no list names
# (docs/results/ecgqa_candidate_measurement_notes.md).
# 3 adds, to the second of two ECGs, which features became normal, became abnormal or stayed abnormal against the
# first. Why 3: ECG-QA's comparison questions on numeric features (templates 68-70, more than a third of its
# official valid questions scored here) ask exactly that, and models reading two version-2 notes answered them
# almost never right (EM 0.00-0.03, docs/results/ecgqa_candidate_measurement_notes_within.md): the set difference of
# two notes is a step they did not learn. A serial comparison is what ECG machines print beside a repeat ECG.
_COMPARISON_TEMPLATES = (68, 69, 70)  # became normal, became abnormal, still abnormal: the comparison's three lists
NOTE_VERSIONS = {1: "below and above the normal range", 2: "below, within and above the normal range",
                 3: "version 2, and for two ECGs the features that became normal, became abnormal or stayed abnormal"}
_MEMO_SIZE = 20_000
_memo: OrderedDict[bytes, dict[str, float]] = OrderedDict()
_memo_lock = threading.Lock()  # serving answers from several threads


@lru_cache(maxsize=None)
def _say_once(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@lru_cache(maxsize=1)
def _ranges() -> dict[str, tuple[float, float]]:
    return load_ecgqa_ranges()


def asks_for_measurements(question: str) -> bool:
    """Does the question ask about an interval, a duration, the heart rate or the heart axis?"""
    return bool(_ASKS.search(question))


def _number(value: object) -> float | None:
    if value is None:
        return None
    value = float(value)  # type: ignore[arg-type]
    return None if math.isnan(value) else value


def measurement_note(values: Mapping[str, object], version: int) -> str:
    """``"Below the normal range: pr interval. Within the normal range: rr interval, p duration. Above the normal
    range: qrs duration, qt interval. Heart axis: left axis deviation."`` from a measurement row: the features in
    each of ECG-QA's range classes, named as its answers name them, and the axis class; a value the measurement could
    not give is said to be missing, never guessed. Short on purpose (about 45 tokens; version 1, which leaves the
    features within the normal range out, about 25): a comparison carries two notes. ``version``: the one the
    checkpoint was trained with (`NOTE_VERSIONS`), never a default, so adding a version changes no one's notes."""
    if version not in NOTE_VERSIONS:
        raise ValueError(f"measurement note version {version!r}: this package writes {sorted(NOTE_VERSIONS)}")
    ranges = _ranges()
    by_class: dict[str, list[str]] = {name: [] for name in RANGE_NAMES}
    missing = []
    for feature in FEATURES:
        seconds = _number(values.get(FEATURE_COLUMNS[feature]))
        if seconds is None:
            missing.append(feature)
        else:
            by_class[range_of(feature, seconds * 1000, ranges)].append(feature)
    below, within, above = (", ".join(by_class[name]) or "none" for name in RANGE_NAMES)
    degrees = _number(values.get(AXIS_COLUMN))
    note = f"Below the normal range: {below}."
    if version >= 2:
        note += f" Within the normal range: {within}."
    note += f" Above the normal range: {above}."
    if missing:
        note += f" Not measured: {', '.join(missing)}."
    return note + f" Heart axis: {'not measured' if degrees is None else axis_class(degrees)}."


def comparison_note(first: Mapping[str, object], second: Mapping[str, object]) -> str:
    """``"Against the first ECG: become normal: pr interval. Become abnormal: none. Still abnormal: qrs duration."``
    from the two ECGs' measurement rows: each feature measured in both, by whether it lies outside ECG-QA's normal
    range in the first and in the second (`ecgllm.datasets.ecgqa_ranges.NUMERIC_COMPARISONS`, the generator's
    comparison answers), named as its answers name them."""
    ranges = _ranges()
    named: dict[tuple[bool, ...], list[str]] = {NUMERIC_COMPARISONS[t]: [] for t in _COMPARISON_TEMPLATES}
    for feature in FEATURES:
        a, b = (_number(row.get(FEATURE_COLUMNS[feature])) for row in (first, second))
        if a is None or b is None:
            continue
        outside = tuple(range_of(feature, v * 1000, ranges) != RANGE_NAMES[1] for v in (a, b))
        if outside in named:
            named[outside].append(feature)
    became_normal, became_abnormal, still = (", ".join(named[NUMERIC_COMPARISONS[t]]) or "none"
                                             for t in _COMPARISON_TEMPLATES)
    return (f"Against the first ECG: become normal: {became_normal}. Become abnormal: {became_abnormal}. "
            f"Still abnormal: {still}.")


def measurements_of(signal: np.ndarray, fs: float, leads: list[str] | tuple[str, ...],
                    meta: Mapping[str, object] | None = None) -> dict[str, float]:
    """The ECG's measurement row: its record's row of a table when the caller attached one (``meta[META_KEY]``,
    as training does from `ecgllm data measure ptbxl --ecgqa-features`), else measured now. Measuring takes about
    0.2 s, so results are kept per signal (by content) for the rest of the process."""
    if meta and META_KEY in meta:
        return dict(meta[META_KEY])  # type: ignore[arg-type]
    from ecgllm.datasets.ecgqa_numeric import ecgqa_measure

    array = np.ascontiguousarray(signal, dtype=np.float32)
    key = hashlib.blake2b(array.tobytes() + repr((float(fs), tuple(leads))).encode(), digest_size=16).digest()
    with _memo_lock:
        if key in _memo:
            _memo.move_to_end(key)
            return dict(_memo[key])
    try:
        with warnings.catch_warnings():  # NeuroKit2 warns on every short or flat lead
            warnings.simplefilter("ignore")
            row = ecgqa_measure(array, fs, leads)
    except ValueError:  # a lead it needs is missing, or the signal is too short to filter: nothing measured
        row = {}
    except Exception as exc:  # noqa: BLE001 - NeuroKit2 fails in other ways on odd signals (TypeError, IndexError):
        row = {}              # the note says "not measured" and the answer goes on; said once, so a bug shows
        _say_once(f"note: an ECG could not be measured for its measurement note ({type(exc).__name__}: {exc}); "
                  "such notes say \"not measured\"")
    with _memo_lock:
        _memo[key] = row
        if len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)
    return dict(row)


def read_measurement_rows(path: str | Path) -> dict[int, dict[str, float]]:
    """ecg_id -> measurement row of a table written by `ecgllm data measure ptbxl --ecgqa-features`."""
    import pandas as pd

    table = pd.read_csv(path, index_col="ecg_id")
    missing = [c for c in (*FEATURE_COLUMNS.values(), AXIS_COLUMN) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: not a table of ECG-QA features (columns {missing} missing); write one with "
                         "`ecgllm data measure ptbxl --ecgqa-features`")
    columns = [*FEATURE_COLUMNS.values(), AXIS_COLUMN]
    return {int(i): row for i, row in table[columns].to_dict(orient="index").items()}
