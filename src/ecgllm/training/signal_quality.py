"""Fit the frozen signal-quality heads (`ecgllm.models.signal_quality`) on training records.

Logistic regression (scikit-learn) on the hand-made noise features, one model per noise kind, per lead and per
record; the answers are PTB-XL's noise columns read as ECG-QA reads them. Called by an instruction stage whose
model has ``signal_quality: true`` and no fitted heads yet, on that stage's own training records: the split policy
has already refused any ECG-QA valid/test patient among them.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ecgllm.datasets.ecgqa_attributes import noise_leads_table
from ecgllm.datasets.ptbxl import PTBXL
from ecgllm.models.signal_quality import QUALITY_KINDS, SignalQuality, lead_design, quality_features, record_design

CHUNK = 512  # ECGs featurised (and read from the cache) at once


def featurize(signals: np.ndarray, lead_masks: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-lead [E, leads, D] and per-record [E, D'] designs of prepared signals [E, leads, T]."""
    per_lead, per_record = [], []
    for start in range(0, len(signals), CHUNK):
        signal = torch.from_numpy(np.asarray(signals[start:start + CHUNK], dtype=np.float32))
        mask = torch.from_numpy(lead_masks[start:start + CHUNK])
        features = quality_features(signal, fs)
        per_lead.append(lead_design(features, mask).numpy())
        per_record.append(record_design(features, mask).numpy())
    return np.concatenate(per_lead), np.concatenate(per_record)


def _logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Standardised-input logistic regression; a kind no training record shows gets its smoothed base rate."""
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        rate = (positives + 0.5) / (len(y) + 1.0)
        return np.zeros(x.shape[1]), float(np.log(rate / (1.0 - rate)))
    model = LogisticRegression(C=0.1, max_iter=3000).fit(x, y)
    return model.coef_[0], float(model.intercept_[0])


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    center, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    return (x - center) / scale, center, scale


def noise_targets(noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the heads answer, from ``noise`` [E, leads, 4] (`noise_leads_table`): per lead [E, leads, kinds] (the
    four noises, then any of them) and per record [E, kinds] (in any lead), in `QUALITY_KINDS` order."""
    per_lead = np.concatenate([noise, noise.any(-1, keepdims=True)], axis=-1)
    return per_lead, per_lead.any(1)


def fit_signal_quality(quality: SignalQuality, signals: np.ndarray, lead_masks: np.ndarray, noise: np.ndarray,
                       fs: float) -> dict[str, int]:
    """Fit ``quality`` in place from prepared ``signals`` [E, leads, T], their ``lead_masks`` [E, leads] and
    ``noise`` [E, leads, 4] (`noise_leads_table`). Returns the positive count of each kind (records)."""
    if len(signals) == 0:
        raise ValueError("no records to fit the signal-quality heads on")
    per_lead, per_record = featurize(signals, lead_masks, fs)
    lead_targets, record_targets = noise_targets(noise)
    present = lead_masks.astype(bool)  # a missing lead says nothing about noise: left out, as at inference
    lead_x, lead_center, lead_scale = _standardise(per_lead[present])
    record_x, record_center, record_scale = _standardise(per_record[present.any(1)])
    lead_fits = [_logistic(lead_x, lead_targets[..., k][present]) for k in range(lead_targets.shape[-1])]
    record_fits = [_logistic(record_x, record_targets[present.any(1), k]) for k in range(record_targets.shape[-1])]
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        quality.lead_center.copy_(as_tensor(lead_center))
        quality.lead_scale.copy_(as_tensor(lead_scale))
        quality.lead_weight.copy_(as_tensor(np.stack([w for w, _ in lead_fits], axis=1)))
        quality.lead_bias.copy_(as_tensor([b for _, b in lead_fits]))
        quality.record_center.copy_(as_tensor(record_center))
        quality.record_scale.copy_(as_tensor(record_scale))
        quality.record_weight.copy_(as_tensor(np.stack([w for w, _ in record_fits], axis=1)))
        quality.record_bias.copy_(as_tensor([b for _, b in record_fits]))
        quality.fs.fill_(fs)
    return {kind: int(record_targets[:, k].sum()) for k, kind in enumerate(QUALITY_KINDS)}


def fit_for_stage(quality: SignalQuality, ecg_ids: set[int], cache, processor, ptbxl: PTBXL) -> str:
    """Fit on a stage's training records that carry PTB-XL's official noise columns, prepared as the stage
    prepares them. Returns a one-line summary for the run's output."""
    table = ptbxl.table
    known = sorted(i for i in ecg_ids if i in table.index and bool(table.at[i, "has_official_metadata"]))
    if not known:
        raise ValueError(f"signal_quality: none of the {len(ecg_ids)} training records has PTB-XL's noise columns "
                         f"in data.ptbxl")
    signals, masks = [], []
    for start in range(0, len(known), CHUNK):
        signal, mask = processor.prepare_ecgs(cache.ecgs(known[start:start + CHUNK]))
        signals.append(signal.numpy())
        masks.append(mask.numpy())
    noise = noise_leads_table(table, known, quality.leads)
    counts = fit_signal_quality(quality, np.concatenate(signals), np.concatenate(masks), noise, processor.prep.fs)
    return (f"signal quality: noise heads fitted on {len(known)} training records (records with each noise: "
            + ", ".join(f"{kind} {n}" for kind, n in counts.items()) + ")")
