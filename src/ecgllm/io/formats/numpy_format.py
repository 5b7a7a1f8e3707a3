"""NumPy .npy / .npz arrays. Pickles are never loaded (allow_pickle=False): a .npy can carry code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgllm.io.errors import HeaderError, UnsupportedFormatError
from ecgllm.io.formats.raw import RawRecord, unit_scale, orient
from ecgllm.io.leads import STANDARD_12

_SIGNAL_KEYS = ("signal", "ecg", "data", "x", "arr_0")


def _load(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise UnsupportedFormatError(path, "stores Python objects (pickle), which ecgllm never loads.",
                                         "Save a plain numeric array with np.save / np.savez.") from None
        raise HeaderError(path, f"is not a readable NumPy file ({exc}).") from None
    except (OSError, EOFError) as exc:
        raise HeaderError(path, f"is not a readable NumPy file ({exc}).",
                          "It may be truncated; save it again.") from None


def read_numpy(path: Path, *, fs: float | None = None, leads: list[str] | None = None,
               units: str = "mV") -> RawRecord:
    """Read ``[leads, samples]`` or ``[samples, leads]``; an .npz may also store ``fs``, ``leads``, ``units``."""
    loaded = _load(path)
    meta: dict = {}
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded as npz:
            key = next((k for k in _SIGNAL_KEYS if k in npz.files), None)
            if key is None:
                raise HeaderError(path, f"has no signal array (looked for {list(_SIGNAL_KEYS)}; found {npz.files}).",
                                  "Store the samples under the key 'signal'.")
            array = npz[key]
            if fs is None and "fs" in npz.files:
                fs = float(npz["fs"])
            if leads is None and "leads" in npz.files:
                leads = [str(v) for v in npz["leads"].tolist()]
            if "units" in npz.files:
                units = str(npz["units"])
    else:
        array = loaded
    if array.dtype.kind not in "iuf":
        raise HeaderError(path, f"holds a {array.dtype} array, not numbers.", "Save a numeric array.")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise HeaderError(path, f"holds an array of shape {array.shape}; an ECG is 2-D [leads, samples].",
                          "Save one recording per file.")
    try:
        array = orient(array, len(leads) if leads else None)
    except ValueError as exc:
        raise HeaderError(path, f"{exc}; got leads={leads}.", "Pass one lead name per channel.") from None
    if leads is None:
        if array.shape[0] != 12:
            raise HeaderError(path, f"has {array.shape[0]} channels and no lead names.",
                              "Pass leads=[...] (or --leads), or store 'leads' in an .npz.")
        leads = list(STANDARD_12)
        meta["assumed_leads"] = True
    scale = unit_scale(path, units)
    return RawRecord(signal=array.astype(np.float32) * scale, fs=fs, names=list(leads), meta=meta)
