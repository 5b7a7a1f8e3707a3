"""Measure many records in parallel into one table (the numeric-feature source of ECG-QA questions)."""

from __future__ import annotations

import multiprocessing as mp
import warnings
from pathlib import Path

import pandas as pd

COLUMNS = ("heart_rate", "rr_ms", "p_ms", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "qtc_fridericia_ms",
           "axis_deg", "quality")


def _measure(job: tuple[int, str]) -> dict:
    from ecgllm.io import ECGReadError, read_ecg
    from ecgllm.signal import measure

    warnings.simplefilter("ignore")
    ecg_id, path = job
    try:
        m = measure(read_ecg(path)).to_dict()
    except ECGReadError:
        return {"ecg_id": ecg_id}
    return {"ecg_id": ecg_id, **{k: m.get(k) for k in COLUMNS}}


def measure_records(paths: dict[int, Path], workers: int = 2, progress: bool = True) -> pd.DataFrame:
    """Measurements of every record in ``paths`` (ecg_id -> record path), indexed by ecg_id."""
    from tqdm import tqdm

    jobs = sorted((int(k), str(v)) for k, v in paths.items())
    with mp.get_context("fork").Pool(workers) as pool:
        rows = list(tqdm(pool.imap(_measure, jobs, chunksize=16), total=len(jobs), unit="rec",
                         desc="measuring", disable=not progress))
    return pd.DataFrame(rows, columns=["ecg_id", *COLUMNS]).set_index("ecg_id")
