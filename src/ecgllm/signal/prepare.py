"""One configurable pipeline from a raw `ECG` to the fixed array a model sees.

`PrepConfig` is plain data (to/from dict) so a checkpoint can store exactly how its inputs were made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ecgllm.io.leads import STANDARD_12
from ecgllm.io.record import ECG
from ecgllm.signal.filters import bandpass, notch, remove_baseline
from ecgllm.signal.leads import reorder_leads
from ecgllm.signal.normalize import NORM_MODES, normalize
from ecgllm.signal.resample import resample
from ecgllm.signal.window import crop_or_pad


@dataclass(frozen=True)
class PrepConfig:
    """How to turn a recording into model input.

    Attributes:
        fs: target sampling rate (Hz).
        leads: output lead order; missing leads become zero rows with mask False.
        bandpass: (low, high) Hz for a zero-phase Butterworth band-pass; None disables it. The low edge
            also removes baseline wander.
        baseline: extra baseline-wander removal: "none", "highpass" or "median".
        notch_hz: mains frequency to notch out (50/60), or None.
        normalize: "none" (mV), "zscore" per lead, or "minmax" per lead.
        window_s: fixed output length in seconds (crop or zero-pad), or None to keep the full length.
        crop: where to crop a longer recording: "start", "center" or "random".
        derive_limb_leads: compute III/aVR/aVL/aVF from I and II when they are missing.
        mask_bad_leads: treat flat-lined/saturated leads (see io validation) as missing.
    """

    fs: float = 100.0
    leads: tuple[str, ...] = STANDARD_12
    bandpass: tuple[float, float] | None = (0.5, 40.0)
    baseline: str = "none"
    notch_hz: float | None = None
    normalize: str = "none"
    window_s: float | None = 10.0
    crop: str = "center"
    derive_limb_leads: bool = True
    mask_bad_leads: bool = True

    def __post_init__(self) -> None:
        if self.normalize not in NORM_MODES:
            raise ValueError(f"normalize must be one of {NORM_MODES}, got {self.normalize!r}")
        if self.baseline not in ("none", "highpass", "median"):
            raise ValueError(f"baseline must be 'none', 'highpass' or 'median', got {self.baseline!r}")
        if self.fs <= 0:
            raise ValueError("fs must be positive")
        object.__setattr__(self, "leads", tuple(self.leads))
        if self.bandpass is not None:
            object.__setattr__(self, "bandpass", tuple(self.bandpass))

    @property
    def n_samples(self) -> int | None:
        return None if self.window_s is None else int(round(self.window_s * self.fs))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["leads"] = list(self.leads)
        data["bandpass"] = list(self.bandpass) if self.bandpass is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrepConfig":
        return cls(**data)


@dataclass
class PreparedECG:
    """Model-ready samples: ``signal [len(leads), T]`` float32, ``mask`` True where a lead is real."""

    signal: np.ndarray
    mask: np.ndarray
    fs: float
    leads: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)


def prepare_array(signal: np.ndarray, fs: float, leads: list[str], config: PrepConfig,
                  exclude: set[str] | frozenset[str] = frozenset(),
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Array-level pipeline: reorder -> resample -> filter -> window -> normalise.

    ``signal`` is ``[leads, T]`` or a batch ``[B, leads, T]`` of records sharing rate and lead layout.
    """
    x, mask = reorder_leads(signal, leads, config.leads, derive=config.derive_limb_leads, exclude=exclude)
    x = resample(x, fs, config.fs)
    if config.baseline != "none":
        x = remove_baseline(x, config.fs, config.baseline)
    if config.bandpass is not None:
        x = bandpass(x, config.fs, *config.bandpass)
    if config.notch_hz:
        x = notch(x, config.fs, config.notch_hz)
    if config.n_samples is not None:
        x = crop_or_pad(x, config.n_samples, config.crop, rng)  # type: ignore[arg-type]
    x = normalize(x, config.normalize, mask)  # type: ignore[arg-type]
    return x, mask


def prepare(ecg: ECG, config: PrepConfig | None = None, rng: np.random.Generator | None = None) -> PreparedECG:
    """Prepare one `ECG` for a model with ``config`` (defaults: 100 Hz, 12 leads, 0.5–40 Hz, 10 s)."""
    config = config or PrepConfig()
    exclude = set(ecg.bad_leads) if config.mask_bad_leads else set()
    x, mask = prepare_array(ecg.signal, ecg.fs, ecg.leads, config, exclude, rng)
    return PreparedECG(signal=x, mask=mask, fs=config.fs, leads=config.leads, meta=dict(ecg.meta))


def prepare_batch(ecgs: list[ECG], config: PrepConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prepare many records at once: ``(signals [N, leads, T], masks [N, leads])`` in input order.

    Records that share rate, lead layout, length and bad leads are stacked and filtered in one call,
    which is several times faster than one `prepare` per record (filter set-up dominates at 10 s).
    Needs a fixed ``config.window_s`` so that every output has the same length.
    """
    config = config or PrepConfig()
    if config.n_samples is None:
        raise ValueError("prepare_batch needs PrepConfig.window_s so all outputs have one length")
    out = np.zeros((len(ecgs), len(config.leads), config.n_samples), dtype=np.float32)
    masks = np.zeros((len(ecgs), len(config.leads)), dtype=bool)
    groups: dict[tuple, list[int]] = {}
    for i, ecg in enumerate(ecgs):
        bad = frozenset(ecg.bad_leads) if config.mask_bad_leads else frozenset()
        groups.setdefault((ecg.fs, tuple(ecg.leads), ecg.n_samples, bad), []).append(i)
    for (fs, leads, _, bad), index in groups.items():
        stacked = np.stack([ecgs[i].signal for i in index])
        x, mask = prepare_array(stacked, fs, list(leads), config, bad)
        out[index] = x
        masks[index] = mask
    return out, masks
