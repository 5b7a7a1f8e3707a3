"""Signal quality: how likely each PTB-XL noise is, per record and per lead, read from the prepared signal.

ECG-QA asks "Does this ECG show baseline drift in lead V3?", "... any kind of noises?" (a quarter of its
single-verify questions on valid). The encoder's classifier was trained on diagnostic statements and has no noise
outputs, and its pooled features see noise poorly (a linear probe: static noise AUC 0.65). Noise is a property of
the recording's spectrum and its stationarity, which a handful of per-lead numbers describe: the share of power
below 0.3/0.7/1.5 Hz (drift), above 30 Hz (static noise), and how much one second of signal differs from the
others (bursts). Two small logistic heads read them: one per lead (the lead's numbers, the record's mean and
maximum, and which lead it is), one per record. They are fitted once, on training records only
(`ecgllm.training.signal_quality`), and stay frozen; their probabilities fill the named-label slots when a
question names a noise (`ecgllm.models.label_tokens`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# ECG-QA's noise names, in PTB-XL's column order, and its "any kind of noises" (any of the four).
NOISE_KINDS = ("baseline drift", "static noise", "burst noise", "electrodes problems")
ANY_NOISE = "any kind of noises"
QUALITY_KINDS = NOISE_KINDS + (ANY_NOISE,)
BAND_EDGES_HZ = (0.0, 0.3, 0.7, 1.5, 5.0, 15.0, 30.0, math.inf)
N_FEATURES = len(BAND_EDGES_HZ) - 1 + 7


def quality_features(signal: torch.Tensor, fs: float) -> torch.Tensor:
    """``signal`` [E, leads, T] (mV, centred) -> [E, leads, N_FEATURES]: log band-power shares, log total power,
    the largest and smallest one-second spread against the median one (bursts, flat stretches), the spread of
    one-second means (drift), and the median, 99th-percentile and largest sample-to-sample step."""
    signal = signal.float()
    n_ecgs, n_leads, n_samples = signal.shape
    power = torch.fft.rfft(signal, dim=-1).abs().square()
    freqs = torch.fft.rfftfreq(n_samples, 1.0 / fs, device=signal.device)
    total = power[..., 1:].sum(-1) + 1e-8
    bands = [torch.log(power[..., (freqs >= lo) & (freqs < hi)].sum(-1) / total + 1e-6)
             for lo, hi in zip(BAND_EDGES_HZ, BAND_EDGES_HZ[1:])]
    second = max(int(round(fs)), 1)
    n_windows = max(n_samples // second, 1)
    windows = signal[..., : n_windows * second].reshape(n_ecgs, n_leads, n_windows, -1)
    spread = windows.std(-1, correction=0) + 1e-6
    typical = spread.median(-1).values
    step = signal.diff(dim=-1).abs()
    median_step, high_step = torch.quantile(step, torch.tensor([0.5, 0.99], device=signal.device), dim=-1)
    extra = [torch.log(total), torch.log(spread.max(-1).values / typical), torch.log(spread.min(-1).values / typical),
             torch.log(windows.mean(-1).std(-1, correction=0) + 1e-6), torch.log(high_step + 1e-6),
             torch.log(median_step + 1e-6), torch.log((step.max(-1).values + 1e-6) / (median_step + 1e-6))]
    return torch.stack(bands + extra, dim=-1)


def _over_present_leads(features: torch.Tensor, lead_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mean, maximum and minimum [E, F] of the features of the leads a record has (a missing lead is a zero row:
    its numbers describe nothing); zeros for a record with no lead."""
    present = lead_mask.bool().unsqueeze(-1)
    count = present.sum(1).clamp(min=1)
    mean = (features * present).sum(1) / count
    high = features.masked_fill(~present, -torch.inf).max(1).values
    low = features.masked_fill(~present, torch.inf).min(1).values
    some = present.any(1)
    return mean, torch.where(some, high, 0.0), torch.where(some, low, 0.0)


def lead_design(features: torch.Tensor, lead_mask: torch.Tensor) -> torch.Tensor:
    """Per-lead inputs [E, leads, 3F + 1 + leads]: the lead's features, the mean and maximum over the record's
    leads, whether the lead is present, and which lead it is."""
    n_ecgs, n_leads, _ = features.shape
    mean, high, _ = _over_present_leads(features, lead_mask)
    which = torch.eye(n_leads, dtype=features.dtype, device=features.device).expand(n_ecgs, n_leads, n_leads)
    present = lead_mask.to(features.dtype).unsqueeze(-1)
    return torch.cat([features, mean.unsqueeze(1).expand_as(features), high.unsqueeze(1).expand_as(features),
                      present, which], dim=-1)


def record_design(features: torch.Tensor, lead_mask: torch.Tensor) -> torch.Tensor:
    """Per-record inputs [E, 3F]: mean, maximum and minimum of the present leads' features."""
    return torch.cat(_over_present_leads(features, lead_mask), dim=-1)


class SignalQuality(nn.Module):
    """Frozen noise heads; ``forward`` gives [E, kinds x (1 + leads)] probabilities, kind-major: for each of
    `QUALITY_KINDS`, the record's probability, then each lead's (see `entry_names`). A lead the record does not
    have gets NaN (its named slot stays blank), and so does every entry of a record with no lead at all."""

    def __init__(self, leads: list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.leads = list(leads)
        n_leads, n_kinds = len(self.leads), len(QUALITY_KINDS)
        lead_inputs, record_inputs = 3 * N_FEATURES + 1 + n_leads, 3 * N_FEATURES
        # Buffers, not parameters: fitted by logistic regression, never by the LM's optimizer.
        self.register_buffer("fs", torch.zeros(()))  # the sampling rate fitted on; 0: not fitted
        self.register_buffer("lead_center", torch.zeros(lead_inputs))
        self.register_buffer("lead_scale", torch.ones(lead_inputs))
        self.register_buffer("lead_weight", torch.zeros(lead_inputs, n_kinds))
        self.register_buffer("lead_bias", torch.zeros(n_kinds))
        self.register_buffer("record_center", torch.zeros(record_inputs))
        self.register_buffer("record_scale", torch.ones(record_inputs))
        self.register_buffer("record_weight", torch.zeros(record_inputs, n_kinds))
        self.register_buffer("record_bias", torch.zeros(n_kinds))

    @property
    def fitted(self) -> bool:
        return float(self.fs) > 0

    @property
    def n_entries(self) -> int:
        return len(QUALITY_KINDS) * (1 + len(self.leads))

    def check_rate(self, fs: float, where: str) -> None:
        """Refuse signals prepared at another rate than the heads were fitted on (their bands are in Hz)."""
        if self.fitted and float(self.fs) != fs:
            raise ValueError(f"{where}: the noise heads were fitted on {float(self.fs):g} Hz signals, but "
                             f"{fs:g} Hz signals are prepared for them")

    def entry_names(self) -> list[str]:
        """What each output answers, in the words ECG-QA asks it: "static noise", "static noise in lead V1", ..."""
        return [name for kind in QUALITY_KINDS for name in [kind] + [f"{kind} in lead {lead}" for lead in self.leads]]

    def forward(self, signal: torch.Tensor, lead_mask: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("the signal-quality heads are not fitted (see ecgllm.training.signal_quality)")
        features = quality_features(signal, float(self.fs))  # float32 whatever the model's dtype
        per_lead = (lead_design(features, lead_mask) - self.lead_center.float()) / self.lead_scale.float()
        per_record = (record_design(features, lead_mask) - self.record_center.float()) / self.record_scale.float()
        lead_p = torch.sigmoid(per_lead @ self.lead_weight.float() + self.lead_bias.float())          # [E, leads, kinds]
        record_p = torch.sigmoid(per_record @ self.record_weight.float() + self.record_bias.float())  # [E, kinds]
        present = lead_mask.to(lead_p.device).bool()
        lead_p = lead_p.masked_fill(~present.unsqueeze(-1), float("nan"))
        record_p = record_p.masked_fill(~present.any(1, keepdim=True), float("nan"))
        return torch.cat([record_p.unsqueeze(1), lead_p], dim=1).transpose(1, 2).reshape(signal.shape[0], -1)

    def _apply(self, fn, recurse: bool = True):
        """Moves follow the model, but the fitted numbers stay fp32: a model cast to bf16 keeps its noise heads
        exact (their standardisation divides by scales as small as 0.01)."""
        exact = {name: buffer for name, buffer in self._buffers.items() if buffer is not None}
        super()._apply(fn, recurse)
        for name, before in exact.items():
            after = self._buffers[name]
            if after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)
        return self
