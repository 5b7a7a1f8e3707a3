"""Bring any lead set into one fixed order, deriving limb leads when possible and masking the rest."""

from __future__ import annotations

import numpy as np

from ecgllm.io.leads import STANDARD_12, canonical_lead


def derive_limb_leads(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add III, aVR, aVL, aVF from I and II (Einthoven's and Goldberger's equations) when missing."""
    if "I" not in values or "II" not in values:
        return values
    lead_i, lead_ii = values["I"], values["II"]
    derived = {
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / 2,
        "aVL": lead_i - lead_ii / 2,
        "aVF": lead_ii - lead_i / 2,
    }
    out = dict(values)
    for name, signal in derived.items():
        out.setdefault(name, signal)
    return out


def reorder_leads(
    signal: np.ndarray,
    leads: list[str],
    target: tuple[str, ...] = STANDARD_12,
    *,
    derive: bool = True,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(signal [..., len(target), T], present_mask [len(target)])``.

    The lead axis is the second to last, so a batch ``[B, leads, T]`` of same-layout records works too.
    The result may share memory with ``signal`` (when nothing needs mapping): treat it as read-only.
    Leads absent from the input (or listed in ``exclude``, e.g. flat-lined ones) are zero rows with
    ``present_mask`` False, so a model can tell "missing" from "zero volts".
    """
    names = [canonical_lead(n) or n for n in leads]
    if tuple(names) == tuple(target) and not exclude:  # already in order: nothing to map or derive
        return signal.astype(np.float32, copy=False), np.ones(len(target), dtype=bool)
    values = {n: signal[..., k, :] for k, n in enumerate(names) if n not in exclude}
    if derive:
        values = derive_limb_leads(values)
    out = np.zeros(signal.shape[:-2] + (len(target), signal.shape[-1]), dtype=np.float32)
    mask = np.zeros(len(target), dtype=bool)
    for k, name in enumerate(target):
        if name in values:
            out[..., k, :] = values[name]
            mask[k] = True
    return out, mask
