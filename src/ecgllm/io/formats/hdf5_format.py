"""CODE-15% official HDF5 files: ``tracings`` [exams, 4096, 12] at 400 Hz, ``exam_id`` [exams]."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgllm.io.errors import HeaderError, UnsupportedFormatError
from ecgllm.io.formats.raw import RawRecord
from ecgllm.io.leads import STANDARD_12

CODE15_FS = 400.0


def _strip_padding(x: np.ndarray) -> np.ndarray:
    """CODE-15% centres shorter exams in 4096 samples with zero padding; drop all-zero edge columns."""
    nonzero = np.flatnonzero(np.any(x != 0, axis=0))
    if nonzero.size == 0:
        return x
    return x[:, nonzero[0]:nonzero[-1] + 1]


def read_code15_hdf5(path: Path, *, exam_id: int | None = None, index: int | None = None,
                     fs: float | None = None) -> RawRecord:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except Exception as exc:
        raise HeaderError(path, f"is not a readable HDF5 file ({exc}).", "It may be truncated.") from None
    with fh:
        if "tracings" not in fh:
            raise UnsupportedFormatError(path, f"is an HDF5 file without a 'tracings' dataset (has {list(fh)}).",
                                         "Only the CODE-15% layout is supported.")
        tracings = fh["tracings"]
        if tracings.ndim != 3:
            raise HeaderError(path, f"has 'tracings' of shape {tracings.shape}; expected [exams, samples, 12].")
        ids = np.asarray(fh["exam_id"]) if "exam_id" in fh else None
        n = tracings.shape[0]
        if exam_id is not None:
            if ids is None or exam_id not in ids:
                raise HeaderError(path, f"has no exam_id {exam_id}.", "List the ids with h5py: f['exam_id'][:].")
            index = int(np.flatnonzero(ids == exam_id)[0])
        if index is None:
            if n != 1:
                raise HeaderError(path, f"holds {n} exams.", "Choose one with exam_id=... or index=...")
            index = 0
        if not 0 <= index < n:
            raise HeaderError(path, f"has {n} exams; index {index} is out of range.")
        data = np.asarray(tracings[index], dtype=np.float32).T
    meta = {"dataset": "CODE-15%", "index": index}
    if ids is not None:
        meta["record_id"] = int(ids[index])
    return RawRecord(signal=_strip_padding(data), fs=fs or CODE15_FS, names=list(STANDARD_12), meta=meta)
