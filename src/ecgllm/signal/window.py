"""Fixed-length windows: crop or pad one window, or cut a long recording into segments."""

from __future__ import annotations

from typing import Literal

import numpy as np

CropMode = Literal["start", "center", "random"]


def crop_or_pad(x: np.ndarray, length: int, mode: CropMode = "center",
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Return ``x[..., length]``: crop (start, centre or random offset) or zero-pad at the end."""
    n = x.shape[-1]
    if n == length:
        return x
    if n < length:
        pad = [(0, 0)] * (x.ndim - 1) + [(0, length - n)]
        return np.pad(x, pad).astype(x.dtype, copy=False)
    if mode == "start":
        start = 0
    elif mode == "center":
        start = (n - length) // 2
    elif mode == "random":
        if rng is None:  # an unseeded crop would make a run impossible to replay
            raise ValueError("crop mode 'random' needs a seeded rng (np.random.default_rng(seed))")
        start = int(rng.integers(0, n - length + 1))
    else:
        raise ValueError(f"unknown crop mode {mode!r}")
    return x[..., start:start + length]


def segment(x: np.ndarray, length: int, stride: int | None = None) -> np.ndarray:
    """Cut ``x [leads, T]`` into windows ``[n, leads, length]``; the last one is aligned to the end.

    A recording shorter than ``length`` gives one zero-padded window.
    """
    stride = stride or length
    n = x.shape[-1]
    if n <= length:
        return crop_or_pad(x, length, "start")[None]
    starts = list(range(0, n - length + 1, stride))
    if starts[-1] != n - length:
        starts.append(n - length)
    return np.stack([x[..., s:s + length] for s in starts])
