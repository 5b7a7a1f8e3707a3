"""Turn raw arrays from any reader into a validated `ECG`, or a typed error that says what is wrong."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ecgllm.io.errors import (
    DurationError,
    ECGQualityWarning,
    EmptyFileError,
    InvalidSignalError,
    SamplingRateError,
    UnknownLeadError,
)
from ecgllm.io.leads import KNOWN_LEADS, canonical_leads
from ecgllm.io.limits import DEFAULT_LIMITS, ReadLimits
from ecgllm.io.record import ECG

# A lead whose peak-to-peak range is below 10 µV carries no ECG (electrode off, zero padding).
FLAT_PEAK_TO_PEAK_MV = 0.01
# A lead that sits at its own extreme value this often is clipped by the amplifier or ADC.
SATURATED_FRACTION = 0.05


def lead_problems(signal: np.ndarray, leads: list[str], hi: np.ndarray | None = None,
                  lo: np.ndarray | None = None) -> dict[str, str]:
    """Leads that are flat-lined or saturated, mapped to the reason (``hi``/``lo``: per-lead max/min)."""
    if signal.shape[1] == 0:
        return {}
    hi = signal.max(axis=1) if hi is None else hi
    lo = signal.min(axis=1) if lo is None else lo
    flat = (hi - lo) < FLAT_PEAK_TO_PEAK_MV
    threshold = SATURATED_FRACTION * signal.shape[1]
    at_hi, at_lo = signal == hi[:, None], signal == lo[:, None]
    saturated = np.zeros(len(leads), dtype=bool)
    # Whole-array counts are ~10x cheaper than per-lead ones; only when they could reach the
    # threshold for some lead is the per-lead count needed.
    if np.count_nonzero(at_hi) >= threshold or np.count_nonzero(at_lo) >= threshold:
        saturated = np.maximum(at_hi.sum(axis=1), at_lo.sum(axis=1)) >= threshold
    problems: dict[str, str] = {}
    for k in np.flatnonzero(flat | saturated):
        problems[leads[k]] = "flat-lined" if flat[k] else "saturated"
    return problems


def normalise_demographics(meta: dict[str, Any]) -> None:
    """Age as a number of years and sex as "M"/"F", whatever spelling the file used ("042Y", "Male", 1)."""
    age = meta.get("age")
    if age is not None:
        text = str(age.item() if hasattr(age, "item") else age).strip().upper()
        unit = text[-1] if text and text[-1] in "YMWD" else "Y"
        digits = text.rstrip("YMWD")
        try:
            years = float(digits) / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[unit]
            meta["age"] = round(years, 1) if years != int(years) else int(years)
        except ValueError:
            meta.pop("age")
    sex = meta.get("sex")
    if sex is not None:
        text = str(sex.item() if hasattr(sex, "item") else sex).strip().lower()
        mapped = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}.get(text)
        if mapped is None:
            meta.pop("sex")
        else:
            meta["sex"] = mapped


def build_ecg(
    signal: np.ndarray,
    fs: float | None,
    lead_names: list[str],
    *,
    path: str | Path | None,
    fmt: str,
    meta: dict[str, Any] | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> ECG:
    """Validate ``signal`` ``[leads, samples]`` (mV) and wrap it in an `ECG`.

    Raises the matching `ECGReadError` subclass for unusable input; warns with `ECGQualityWarning`
    (and records ``meta['bad_leads']``) when only some leads are flat or saturated.
    """
    signal = np.asarray(signal)
    if signal.ndim != 2 or signal.size == 0:
        raise EmptyFileError(path, f"holds no samples (array shape {signal.shape}).",
                             "Check that the file was exported completely.")
    if fs is None:
        raise SamplingRateError(path, "does not state its sampling rate.",
                                "Pass it explicitly, e.g. read_ecg(path, fs=500) or --fs 500.")
    fs = float(fs)
    if not np.isfinite(fs) or not limits.min_fs <= fs <= limits.max_fs:
        raise SamplingRateError(
            path, f"has a sampling rate of {fs:g} Hz, outside the supported {limits.min_fs:g}–{limits.max_fs:g} Hz.",
            "If the header is wrong, pass the real rate with fs=...")
    if signal.shape[0] != len(lead_names):
        raise UnknownLeadError(path, f"has {signal.shape[0]} channels but {len(lead_names)} lead names {lead_names}.",
                               "Pass one name per channel with leads=[...].")
    if signal.shape[0] > limits.max_leads:
        raise InvalidSignalError(path, f"has {signal.shape[0]} channels; at most {limits.max_leads} are accepted.",
                                 "Is the array transposed? ECGs are [leads, samples].")
    leads, unknown = canonical_leads([str(n) for n in lead_names])
    if unknown:
        raise UnknownLeadError(
            path, f"has channels that are not ECG leads ecgllm knows: {unknown}.",
            f"Known leads: {', '.join(KNOWN_LEADS)}. Rename the channels or pass leads=[...].")
    if len(set(leads)) != len(leads):
        dupes = sorted({lead for lead in leads if leads.count(lead) > 1})
        raise UnknownLeadError(path, f"names the same lead twice: {dupes} (from {lead_names}).",
                               "Pass distinct names with leads=[...].")

    duration = signal.shape[1] / fs
    if duration < limits.min_duration_s:
        raise DurationError(path, f"is {duration:.2f} s long; at least {limits.min_duration_s:g} s are needed.",
                            "Use a longer recording (a standard ECG lasts 10 s).")
    if duration > limits.max_duration_s:
        raise DurationError(path, f"is {duration:.0f} s long; the limit is {limits.max_duration_s:g} s.",
                            "Read a window with start_s=/duration_s=, or raise ReadLimits.max_duration_s.")

    signal = signal.astype(np.float32, copy=False)
    hi, lo = signal.max(axis=1), signal.min(axis=1)  # NaN and inf show up in these, saving a full pass
    if not (np.isfinite(hi).all() and np.isfinite(lo).all()):
        finite = np.isfinite(signal)
        bad = [leads[k] for k in np.flatnonzero(~finite.all(axis=1))]
        count = int((~finite).sum())
        raise InvalidSignalError(
            path, f"contains {count} NaN/inf samples in leads {bad}.",
            "Re-export the recording, or remove those leads before reading.")

    problems = lead_problems(signal, leads, hi, lo)
    if problems and len(problems) == len(leads):
        raise InvalidSignalError(path, f"has no usable lead: {problems}.",
                                 "Every lead is flat-lined or saturated; check the electrodes and the export.")
    meta = dict(meta or {})
    normalise_demographics(meta)
    meta.setdefault("source", str(path) if path is not None else None)
    meta["format"] = fmt
    meta["bad_leads"] = problems
    meta.setdefault("warnings", [])
    if problems:
        text = ", ".join(f"{lead} ({why})" for lead, why in problems.items())
        message = f"{path}: some leads are unusable: {text}; they will be masked as missing."
        meta["warnings"].append(message)
        warnings.warn(message, ECGQualityWarning, stacklevel=3)
    return ECG(signal=np.ascontiguousarray(signal), fs=fs, leads=leads, meta=meta)
