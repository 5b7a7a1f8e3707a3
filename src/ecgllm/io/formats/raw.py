"""What a format reader hands to validation: samples in mV plus the names and rate the file states."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNIT_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3, "microvolt": 1e-3,
              "microvolts": 1e-3, "v": 1e3, "volt": 1e3, "nv": 1e-6}


def unit_scale(path, units: str) -> float:
    """Factor from ``units`` to millivolts; a HeaderError naming the file for unknown units."""
    from ecgllm.io.errors import HeaderError

    scale = UNIT_TO_MV.get(units.lower())
    if scale is None:
        raise HeaderError(path, f"states units {units!r}, which ecgllm does not know.", "Use mV, uV or V.")
    return scale


@dataclass
class RawRecord:
    signal: np.ndarray  # [leads, samples], millivolts
    fs: float | None
    names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def orient(array: np.ndarray, n_leads: int | None = None) -> np.ndarray:
    """Return ``array`` as [leads, samples]: the axis that matches ``n_leads``, else the shorter one."""
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {array.shape}")
    rows, cols = array.shape
    if n_leads is not None:
        if rows == n_leads:
            return array
        if cols == n_leads:
            return array.T
        raise ValueError(f"neither axis of shape {array.shape} has {n_leads} leads")
    return array if rows <= cols else array.T
