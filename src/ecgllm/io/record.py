"""The one in-memory form of an ECG that every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ECG:
    """A multi-lead ECG recording.

    Attributes:
        signal: float32 array ``[leads, samples]`` in millivolts.
        fs: sampling rate in Hz.
        leads: canonical lead names, one per row of ``signal`` (see ``ecgllm.io.leads``).
        meta: free-form metadata: ``source`` (path), ``format``, ``record_id``, ``age``, ``sex``,
            ``bad_leads`` (lead -> reason), ``warnings``, and whatever the format carries.
    """

    signal: np.ndarray
    fs: float
    leads: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.signal = np.asarray(self.signal, dtype=np.float32)
        if self.signal.ndim != 2:
            raise ValueError(f"ECG.signal must be 2-D [leads, samples], got shape {self.signal.shape}")
        if self.signal.shape[0] != len(self.leads):
            raise ValueError(f"ECG has {self.signal.shape[0]} rows but {len(self.leads)} lead names")
        self.fs = float(self.fs)

    @property
    def n_leads(self) -> int:
        return int(self.signal.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    @property
    def bad_leads(self) -> dict[str, str]:
        return dict(self.meta.get("bad_leads", {}))

    def lead(self, name: str) -> np.ndarray:
        """Samples of one lead by canonical name (raises KeyError when absent)."""
        return self.signal[self.leads.index(name)]

    def __repr__(self) -> str:
        return (f"ECG(leads={self.leads}, fs={self.fs:g} Hz, duration={self.duration_s:.2f} s, "
                f"source={self.meta.get('source')!r})")
