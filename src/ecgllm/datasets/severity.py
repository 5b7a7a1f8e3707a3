"""Severity strata: the confounder S of the de-biasing method and of the evaluation's strata report.

Defined from PTB-XL labels only (never from questions or answers):
- ``superclass_stratum``: "normal" (NORM and no abnormal diagnostic superclass), "one abnormal" (exactly one of
  CD / HYP / MI / STTC), "several abnormal" (two or more), "no diagnostic label" (none of the five; PTB-XL has
  a few hundred such records, mostly rhythm/form statements only).
- ``n_abnormal``: number of the 71 statements present other than NORM and sinus rhythm (SR), binned 0/1/2/3+.
A prompt with two ECGs takes the more severe stratum of the two.
"""

from __future__ import annotations

import numpy as np

SUPERCLASS_STRATA = ("normal", "one abnormal", "several abnormal", "no diagnostic label")
COUNT_STRATA = ("0", "1", "2", "3+")
_NOT_ABNORMAL = {"NORM", "SR"}
_ORDER = {name: i for i, name in enumerate(("normal", "no diagnostic label", "one abnormal", "several abnormal"))}


def superclass_stratum(superclasses: list[str]) -> str:
    abnormal = [c for c in superclasses if c != "NORM"]
    if len(abnormal) >= 2:
        return "several abnormal"
    if len(abnormal) == 1:
        return "one abnormal"
    return "normal" if "NORM" in superclasses else "no diagnostic label"


def count_stratum(statements: list[str]) -> str:
    n = len([c for c in statements if c not in _NOT_ABNORMAL])
    return COUNT_STRATA[min(n, 3)]


def strata_for(ptbxl, ecg_ids, kind: str = "superclass") -> dict[int, str]:
    """Stratum of each record (ids unknown to this PTB-XL copy are left out)."""
    out = {}
    for ecg_id in {int(i) for i in ecg_ids}:
        if ecg_id not in ptbxl.table.index:
            continue
        if kind == "superclass":
            out[ecg_id] = superclass_stratum(ptbxl.labels(ecg_id, "superclass"))
        elif kind == "count":
            out[ecg_id] = count_stratum(ptbxl.labels(ecg_id, "all"))
        else:
            raise ValueError(f"kind must be 'superclass' or 'count', got {kind!r}")
    return out


def most_severe(strata: list[str], kind: str = "superclass") -> str:
    if kind == "count":
        return max(strata, key=COUNT_STRATA.index)
    return max(strata, key=_ORDER.__getitem__)


def stratum_weights(strata: list[str]) -> dict[str, float]:
    """P(s) estimated from counts."""
    names, counts = np.unique(np.array(strata), return_counts=True)
    return {str(n): float(c / counts.sum()) for n, c in zip(names, counts)}
