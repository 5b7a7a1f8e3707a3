"""Fit the balanced named-label probabilities (`LabelTokens.fit_priors`): each named entry's share of a stage's
training records.

The classifier's statements and superclasses are counted from PTB-XL's labels, the noise entries from PTB-XL's
noise columns read as ECG-QA reads them (`noise_leads_table`), on the records the stage trains on (the split policy
has already refused any ECG-QA valid/test patient among them). Counts are smoothed by half a record so that a label
no training record shows still has a finite logit.
"""

from __future__ import annotations

import numpy as np
import torch

from ecgllm.datasets.ecgqa_attributes import noise_leads_table
from ecgllm.datasets.ptbxl import PTBXL
from ecgllm.models.label_tokens import LabelTokens
from ecgllm.training.signal_quality import noise_targets


def _smoothed(positives: np.ndarray, total: int) -> np.ndarray:
    return (positives + 0.5) / (total + 1.0)


def named_prevalence(label_tokens: LabelTokens, statements: list[str], superclasses: list[str], ecg_ids: set[int],
                     ptbxl: PTBXL) -> tuple[torch.Tensor, int]:
    """Prevalence [named entries] in `LabelTokens.named_vocabulary` order (the classifier's ``statements``, then
    its ``superclasses``, then the noise entries), and how many records it counts."""
    table = ptbxl.table
    ids = np.array(sorted(i for i in ecg_ids if i in table.index))
    if len(ids) == 0:
        raise ValueError(f"balanced named labels: none of the {len(ecg_ids)} training records is in PTB-XL")
    label_counts = []
    for kind, codes in (("all", statements), ("superclass", superclasses)):  # "NORM" is both: kept apart
        _, classes, y = ptbxl.label_matrix(kind, ids)
        unknown = [code for code in codes if code not in classes]
        if unknown:
            raise ValueError(f"balanced named labels: the classifier's labels {unknown} are not PTB-XL {kind} "
                             f"labels")
        label_counts += [y[:, classes.index(code)].sum() for code in codes]
    prevalence = [_smoothed(np.array(label_counts, dtype=float), len(ids))]
    quality = label_tokens.quality
    if quality is not None:
        known = [int(i) for i in ids if bool(table.at[i, "has_official_metadata"])]
        if not known:
            raise ValueError("balanced named labels: no training record has PTB-XL's noise columns")
        per_lead, per_record = noise_targets(noise_leads_table(table, known, quality.leads))
        # laid out as `SignalQuality.forward` lays out its outputs: each kind, then that kind in each lead
        entries = np.concatenate([per_record[:, None], per_lead], axis=1).transpose(0, 2, 1).reshape(len(known), -1)
        prevalence.append(_smoothed(entries.sum(0).astype(float), len(known)))
    return torch.as_tensor(np.concatenate(prevalence), dtype=torch.float64), len(ids)


def fit_for_stage(label_tokens: LabelTokens, label_vocab: dict[str, list[str]], ecg_ids: set[int],
                  ptbxl: PTBXL) -> str:
    """Fit the priors on a stage's training records (``label_vocab``: the encoder's labels.json); a one-line
    summary for the run's output."""
    prevalence, records = named_prevalence(label_tokens, label_vocab.get("all71", []),
                                           label_vocab.get("superclass", []), ecg_ids, ptbxl)
    label_tokens.fit_priors(prevalence, records)
    return (f"balanced named labels: prevalences of {len(prevalence)} named entries from {records} training records "
            f"(median {float(prevalence.median()):.3f}, smallest {float(prevalence.min()):.4f})")
