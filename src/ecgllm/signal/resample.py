"""Polyphase resampling (scipy.signal.resample_poly) between any two rates."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import signal as sps


def resample(x: np.ndarray, fs: float, target_fs: float) -> np.ndarray:
    """Resample along the last axis from ``fs`` to ``target_fs`` with an anti-aliasing polyphase filter."""
    if abs(fs - target_fs) < 1e-9:
        return x.astype(np.float32, copy=False)
    ratio = Fraction(target_fs / fs).limit_denominator(1000)
    return sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)
