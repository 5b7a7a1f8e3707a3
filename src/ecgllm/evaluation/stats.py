"""Confidence intervals for headline numbers."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-item scores (0/1 for accuracy)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    n = len(values)
    if np.isin(values, (0.0, 1.0)).all():
        # for 0/1 scores the resampled mean is exactly Binomial(n, mean) / n: no index arrays needed
        means = rng.binomial(n, values.mean(), size=n_boot) / n
    else:
        means = np.array([values[rng.integers(0, n, n)].mean() for _ in range(n_boot)])
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def bootstrap_metric_ci(metric, y_true: np.ndarray, y_score: np.ndarray, n_boot: int = 500, seed: int = 0,
                        alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of any metric(y_true, y_score) over resampled rows; draws where the metric is
    undefined (e.g. one class only) are skipped."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(y_true), len(y_true))
        try:
            values.append(metric(y_true[rows], y_score[rows]))
        except ValueError:
            continue
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def wilson_ci(correct: int, n: int) -> tuple[float, float]:
    """Wilson score interval for a proportion: sound for the small zero-shot sets."""
    from scipy.stats import binomtest

    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))
