"""Normal ranges of ECG-QA's numeric features, estimated from official training samples.

ECG-QA labels a numeric feature (RR, P duration, PR, QRS, QT, QTc) as below/within/above its normal range
using its own lead-II measurements and thresholds, neither of which is published in the material we have.
Official comparison samples ("which features became normal / abnormal / stayed abnormal") constrain
those labels, so for each feature we search the (low, high) pair that best reproduces the official
*training* answers from ecgllm's measurements of the same ECGs. Validation samples judge the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ecgllm.datasets.ecgqa_attributes import MEASUREMENT_COLUMNS, NORMAL_RANGES

RANGES_JSON = Path(__file__).resolve().parents[1] / "data" / "ecgqa_normal_ranges.json"
# Comparison templates: required (abnormal in first ECG, abnormal in second) for a feature to be named.
NUMERIC_COMPARISONS = {68: (True, False), 69: (False, True), 70: (True, True),
                       54: (True, False), 55: (False, True), 56: (True, True)}


def _rows(samples) -> list[tuple[int, int, int, set[str]]]:
    return [(s.template_id, s.ecg_id[0], s.ecg_id[1], set(s.answer)) for s in samples
            if s.template_id in NUMERIC_COMPARISONS]


def feature_agreement(samples, measurements: pd.DataFrame, feature: str, lo: float, hi: float) -> tuple[float, int]:
    """Share of samples where our rule and the official answer agree on ``feature`` being named."""
    rows = _rows(samples)
    col = MEASUREMENT_COLUMNS[feature]
    a = measurements[col].reindex([r[1] for r in rows]).to_numpy(dtype=float)
    b = measurements[col].reindex([r[2] for r in rows]).to_numpy(dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    need = np.array([NUMERIC_COMPARISONS[r[0]] for r in rows], dtype=bool).reshape(-1, 2)
    predicted = (((a < lo) | (a > hi)) == need[:, 0]) & (((b < lo) | (b > hi)) == need[:, 1])
    truth = np.array([feature in r[3] for r in rows])
    n = int(ok.sum())
    return (float(((predicted == truth) & ok).sum() / n) if n else float("nan")), n


def fit_normal_ranges(samples, measurements: pd.DataFrame) -> dict[str, dict]:
    """Per feature: the (low, high) among percentiles of the measured values that agrees best."""
    fitted = {}
    for feature, col in MEASUREMENT_COLUMNS.items():
        values = measurements[col].dropna().to_numpy(dtype=float)
        lows = [-np.inf] + list(np.percentile(values, np.arange(0, 51)))
        highs = list(np.percentile(values, np.arange(50, 101))) + [np.inf]
        best = max((feature_agreement(samples, measurements, feature, lo, hi)[0], lo, hi)
                   for lo in lows for hi in highs)
        # JSON has no infinity: an unbounded edge is written as null.
        edges = [None if np.isinf(x) else round(float(x), 1) for x in (best[1], best[2])]
        fitted[feature] = {"range_ms": edges, "train_agreement": round(best[0], 4)}
    return fitted


def _edges(pair: list[float | None]) -> tuple[float, float]:
    lo, hi = pair
    return (-np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))


def load_ecgqa_ranges() -> dict[str, tuple[float, float]]:
    """Fitted ranges when the packaged file exists, else the standard clinical ranges."""
    if RANGES_JSON.exists():
        data = json.loads(RANGES_JSON.read_text())
        return {f: _edges(v["range_ms"]) for f, v in data["features"].items()}
    return dict(NORMAL_RANGES)
