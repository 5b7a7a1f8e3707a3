"""Amplitude normalisation modes shared by training and inference."""

from __future__ import annotations

from typing import Literal

import numpy as np

NormMode = Literal["none", "center", "zscore", "minmax"]
NORM_MODES: tuple[str, ...] = ("none", "center", "zscore", "minmax")


def normalize(x: np.ndarray, mode: NormMode = "none", mask: np.ndarray | None = None,
              eps: float = 1e-6) -> np.ndarray:
    """Normalise each lead (row) of ``x``.

    ``none`` keeps millivolts; ``center`` keeps millivolts minus each lead's mean; ``zscore`` gives zero mean / unit variance per lead; ``minmax`` maps each
    lead to [-1, 1]. Rows where ``mask`` is False stay exactly zero.
    """
    if mode == "none":
        out = x.astype(np.float32, copy=True)
    elif mode == "center":
        out = (x - x.mean(axis=-1, keepdims=True)).astype(np.float32)
    elif mode == "zscore":
        mean = x.mean(axis=-1, keepdims=True)
        std = x.std(axis=-1, keepdims=True)
        out = ((x - mean) / np.maximum(std, eps)).astype(np.float32)
    elif mode == "minmax":
        lo = x.min(axis=-1, keepdims=True)
        hi = x.max(axis=-1, keepdims=True)
        out = (2 * (x - lo) / np.maximum(hi - lo, eps) - 1).astype(np.float32)
    else:
        raise ValueError(f"unknown normalisation {mode!r}; choose one of {NORM_MODES}")
    if mask is not None:
        out[..., ~mask, :] = 0.0
    return out
