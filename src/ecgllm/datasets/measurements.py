"""Measure many records into one table: ecgllm's own measurements (`measure_records`) and ECG-QA's numeric
features and heart axis (`measure_ecgqa_records`), the source of ECG-QA's numeric and axis questions."""

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


def _measure_ecgqa(job: tuple[int, str, bool]) -> dict:
    from ecgllm.datasets.ecgqa_numeric import COLUMNS as ECGQA_COLUMNS
    from ecgllm.datasets.ecgqa_numeric import ecgqa_measure
    from ecgllm.io import ECGReadError, read_ecg

    warnings.simplefilter("ignore")
    ecg_id, path, axis = job
    try:
        ecg = read_ecg(path)
        return {"ecg_id": ecg_id, **ecgqa_measure(ecg.signal, ecg.fs, ecg.leads, axis=axis)}
    except (ECGReadError, OSError, ValueError) as exc:  # unreadable, absent or a lead missing: undefined
        return {"ecg_id": ecg_id, **{c: float("nan") for c in ECGQA_COLUMNS}, "error": str(exc)[:200]}


def measure_ecgqa_records(paths: dict[int, Path], cache: Path | None = None, workers: int = 1,
                          progress: bool = True, save_every: int = 200,
                          axis_ids: set[int] | None = None) -> pd.DataFrame:
    """ECG-QA's numeric features and heart axis (`ecgllm.datasets.ecgqa_numeric`) of every record in
    ``paths`` (ecg_id -> record path), indexed by ecg_id. ``axis_ids``: only these records get the heart
    axis (it costs two of the three delineations); None: all.

    With ``cache`` (a CSV, best kept outside the work tree), records already measured are read back and new
    ones are appended every ``save_every`` records, so an interrupted run resumes where it stopped.
    """
    from tqdm import tqdm

    from ecgllm.datasets.ecgqa_numeric import COLUMNS as ECGQA_COLUMNS

    columns = ["ecg_id", *ECGQA_COLUMNS, "error"]
    table = pd.read_csv(cache, index_col="ecg_id") if cache is not None and Path(cache).exists() else \
        pd.DataFrame(columns=columns).set_index("ecg_id")
    if "axis_measured" in table.columns:  # rows written before that column existed measured the axis
        table["axis_measured"] = table["axis_measured"].fillna(1.0)
    wants_axis = (lambda i: True) if axis_ids is None else (lambda i: i in axis_ids)
    # to do: records never measured, and records measured without the axis that now need it
    redo = {int(i) for i in table.index if "axis_measured" in table.columns and not table.at[i, "axis_measured"]
            and wants_axis(int(i))}
    table = table.drop(index=sorted(redo & set(table.index)))
    jobs = sorted((int(k), str(v), wants_axis(int(k))) for k, v in paths.items() if int(k) not in table.index)
    rows: list[dict] = []

    def flush() -> None:
        nonlocal table, rows
        if rows:
            fresh = pd.DataFrame(rows, columns=columns).set_index("ecg_id")
            table = fresh if table.empty else pd.concat([table, fresh])
            table = table.sort_index()
            rows = []
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(cache) + ".tmp")
            table.to_csv(tmp)
            tmp.replace(cache)

    results = map(_measure_ecgqa, jobs)
    pool = None
    if workers > 1:
        pool = mp.get_context("fork").Pool(workers)
        results = pool.imap(_measure_ecgqa, jobs, chunksize=8)
    try:
        for k, row in enumerate(tqdm(results, total=len(jobs), unit="rec", desc="ECG-QA features",
                                     disable=not progress), 1):
            rows.append(row)
            if k % save_every == 0:
                flush()
    finally:
        if pool is not None:
            pool.close()
        flush()
    return table.loc[table.index.intersection([int(k) for k in paths])]
