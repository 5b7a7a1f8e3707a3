"""CSV/TSV text: one column per lead, an optional time column, any common delimiter."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ecgllm.io.errors import EmptyFileError, HeaderError, SamplingRateError
from ecgllm.io.formats.raw import RawRecord, unit_scale
from ecgllm.io.leads import STANDARD_12, canonical_lead

_TIME_COLUMNS = {"time": 1.0, "t": 1.0, "seconds": 1.0, "sec": 1.0, "s": 1.0, "time_s": 1.0,
                 "ms": 1e-3, "time_ms": 1e-3, "millis": 1e-3, "milliseconds": 1e-3}
_INDEX_COLUMNS = {"sample", "samples", "index", "idx", "n", ""}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path, *, fs: float | None = None, leads: list[str] | None = None,
             units: str = "mV") -> RawRecord:
    """Read a CSV; fs comes from the ``fs`` hint or from a time column (seconds, or ms if so named)."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise EmptyFileError(path, "has no data rows.", "Export the recording again.")
    try:
        dialect = csv.Sniffer().sniff(lines[0] + "\n" + "\n".join(lines[1:3]), delimiters=",;\t ")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, skipinitialspace=True))
    header = [c.strip() for c in rows[0]]
    has_header = not all(_is_number(c) for c in header if c)
    body = rows[1:] if has_header else rows
    width = len(header)
    if not body:
        raise EmptyFileError(path, "has a header but no data rows.", "Export the recording again.")
    bad_row = next((i for i, r in enumerate(body) if len(r) != width), None)
    if bad_row is not None:
        line_no = bad_row + (2 if has_header else 1)
        raise HeaderError(path, f"has rows of different lengths (line {line_no} has {len(body[bad_row])} values, "
                          f"the first row {width}).", "Each row needs one value per column.")
    try:
        data = np.array([[float(v) if v.strip() else np.nan for v in r] for r in body], dtype=np.float64)
    except ValueError as exc:
        raise HeaderError(path, f"has a non-numeric value in its data rows ({exc}).",
                          "Every row after the header must hold numbers only.") from None
    names = header if has_header else [f"col{i}" for i in range(width)]
    meta: dict = {"delimiter": delimiter}
    time_scale = None
    keep = []
    for i, name in enumerate(names):
        key = name.lower()
        if has_header and key in _TIME_COLUMNS and canonical_lead(name) is None:
            time_scale, time_col = _TIME_COLUMNS[key], i
        elif has_header and key in _INDEX_COLUMNS:
            continue
        else:
            keep.append(i)
    if time_scale is not None and fs is None:
        t = data[:, time_col] * time_scale
        steps = np.diff(t)
        if steps.size == 0 or not np.all(steps > 0):
            raise SamplingRateError(path, "has a time column that does not increase steadily.",
                                    "Fix the time column or pass fs=... explicitly.")
        fs = float(round(1.0 / float(np.median(steps)), 6))
        if np.max(np.abs(steps - np.median(steps))) > 0.01 * np.median(steps):
            raise SamplingRateError(path, "has irregular time steps, so it has no single sampling rate.",
                                    "Resample it to a fixed rate first, or pass fs=...")
        meta["fs_from"] = "time column"
    lead_names = [names[i] for i in keep]
    if leads is not None:
        if len(leads) != len(keep):
            raise HeaderError(path, f"has {len(keep)} signal columns but {len(leads)} lead names were given.",
                              "Pass one name per signal column.")
        lead_names = list(leads)
    elif not has_header:
        if len(keep) != 12:
            raise HeaderError(path, f"has no header row and {len(keep)} columns.",
                              "Add a header with lead names, or pass leads=[...] (--leads).")
        lead_names = list(STANDARD_12)
        meta["assumed_leads"] = True
    scale = unit_scale(path, units)
    signal = data[:, keep].T.astype(np.float32) * scale
    return RawRecord(signal=signal, fs=fs, names=lead_names, meta=meta)
