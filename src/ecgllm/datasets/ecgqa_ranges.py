"""Normal ranges of ECG-QA's numeric features.

ECG-QA labels each numeric feature (RR, P duration, PR, QRS, QT, QTc; its NeuroKit2 lead-II measurements) as
below / within / above an inclusive normal range. The ranges are ECG-QA's own thresholds, shipped in
``data/ecgqa_normal_ranges.json``, which `ecgllm.datasets.ecgqa_attributes.load_ecgqa_ranges` reads; the
QTc upper bound follows the official answers rather than ECG-QA's code (see the file). `feature_agreement`
and `fit_normal_ranges` measure and search ranges against official comparison samples, to check a threshold
against the released answers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecgllm.datasets.ecgqa_attributes import ECGQA_COLUMNS, MEASUREMENT_COLUMNS
# Comparison templates: required (abnormal in first ECG, abnormal in second) for a feature to be named.
NUMERIC_COMPARISONS = {68: (True, False), 69: (False, True), 70: (True, True),
                       54: (True, False), 55: (False, True), 56: (True, True)}


def _rows(samples) -> list[tuple[int, int, int, set[str]]]:
    return [(s.template_id, s.ecg_id[0], s.ecg_id[1], set(s.answer)) for s in samples
            if s.template_id in NUMERIC_COMPARISONS]


def feature_ms(measurements: pd.DataFrame, feature: str) -> pd.Series:
    """A feature in ms from a measurement table (ECG-QA's seconds columns first, else ecgllm's ms columns)."""
    if ECGQA_COLUMNS[feature] in measurements.columns:
        return measurements[ECGQA_COLUMNS[feature]].astype(float) * 1000.0
    return measurements[MEASUREMENT_COLUMNS[feature]].astype(float)


def feature_agreement(samples, measurements: pd.DataFrame, feature: str, lo: float, hi: float) -> tuple[float, int]:
    """Share of comparison samples where the range (lo, hi) in ms and the official answer agree on ``feature``
    being named."""
    rows = _rows(samples)
    values = feature_ms(measurements, feature)
    a = values.reindex([r[1] for r in rows]).to_numpy(dtype=float)
    b = values.reindex([r[2] for r in rows]).to_numpy(dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    need = np.array([NUMERIC_COMPARISONS[r[0]] for r in rows], dtype=bool).reshape(-1, 2)
    predicted = (((a < lo) | (a > hi)) == need[:, 0]) & (((b < lo) | (b > hi)) == need[:, 1])
    truth = np.array([feature in r[3] for r in rows])
    n = int(ok.sum())
    return (float(((predicted == truth) & ok).sum() / n) if n else float("nan")), n


def fit_normal_ranges(samples, measurements: pd.DataFrame) -> dict[str, dict]:
    """Per feature: the (low, high) in ms among percentiles of the measured values that agrees best."""
    fitted = {}
    for feature in MEASUREMENT_COLUMNS:
        values = feature_ms(measurements, feature).dropna().to_numpy(dtype=float)
        lows = [-np.inf] + list(np.percentile(values, np.arange(0, 51)))
        highs = list(np.percentile(values, np.arange(50, 101))) + [np.inf]
        best = max((feature_agreement(samples, measurements, feature, lo, hi)[0], lo, hi)
                   for lo in lows for hi in highs)
        # JSON has no infinity: an unbounded edge is written as null.
        edges = [None if np.isinf(x) else round(float(x), 1) for x in (best[1], best[2])]
        fitted[feature] = {"range_ms": edges, "train_agreement": round(best[0], 4)}
    return fitted

