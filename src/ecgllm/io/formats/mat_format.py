"""MATLAB files: PhysioNet/CinC (.mat + .hea), CPSC 2018 (struct ECG), CODE-15% exports (feats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgllm.io.errors import HeaderError, UnsupportedFormatError
from ecgllm.io.formats.raw import RawRecord, orient
from ecgllm.io.leads import STANDARD_12

CPSC2018_FS = 500.0  # CPSC 2018 stores neither rate nor lead names; both are fixed by the challenge.


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path, squeeze_me=False)
    except NotImplementedError:
        raise UnsupportedFormatError(path, "is a MATLAB v7.3 (HDF5) file.",
                                     "Save it with -v7 or convert it to .npz or WFDB.") from None
    except Exception as exc:
        raise HeaderError(path, f"is not a readable MATLAB file ({type(exc).__name__}: {exc}).",
                          "It may be truncated; copy it again.") from None


def _scalar(value) -> object:
    array = np.asarray(value)
    while array.dtype == object and array.size == 1:
        array = np.asarray(array.reshape(-1)[0])
    return array.reshape(-1)[0] if array.size else None


def read_mat(path: Path, *, fs: float | None = None, leads: list[str] | None = None) -> RawRecord:
    """Read a .mat whose sibling .hea is absent (CinC records with a .hea go through the WFDB reader)."""
    content = _loadmat(path)
    if "ECG" in content:  # CPSC 2018: struct with sex, age, data (12 x N, mV, 500 Hz)
        struct = content["ECG"][0, 0]
        data = np.asarray(struct["data"], dtype=np.float64)
        meta = {"dataset": "CPSC2018"}
        for key in ("age", "sex"):
            if key in struct.dtype.names:
                meta[key] = _scalar(struct[key])
        names = leads or list(STANDARD_12)
        return RawRecord(signal=orient(data, len(names)), fs=fs or CPSC2018_FS, names=names, meta=meta)
    if "feats" in content:  # CODE-15% exam exported to MATLAB
        data = np.asarray(content["feats"], dtype=np.float64)
        rate = fs or float(_scalar(content.get("curr_sample_rate", content.get("org_sample_rate", 400))))
        meta = {"dataset": "CODE-15%"}
        if "idx" in content:
            meta["index"] = int(_scalar(content["idx"]))
        names = leads or list(STANDARD_12)
        return RawRecord(signal=orient(data, len(names)), fs=rate, names=names, meta=meta)
    if "val" in content:  # PhysioNet .mat without its .hea: digital units, gains unknown
        raise HeaderError(path, "is a PhysioNet/CinC .mat file whose .hea header is missing.",
                          "Put the .hea next to it: gains, rate and lead names are stored there.")
    keys = [k for k in content if not k.startswith("__")]
    raise UnsupportedFormatError(path, f"is a MATLAB file of unknown layout (variables {keys}).",
                                 "Supported: CinC .mat+.hea, CPSC 2018 'ECG' struct, CODE-15% 'feats'.")
