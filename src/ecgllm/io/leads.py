"""Canonical ECG lead names and the many spellings found in real files."""

from __future__ import annotations

import re
from functools import lru_cache

STANDARD_12: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
# Leads that appear in real recordings beyond the standard twelve (right-sided, posterior, Frank XYZ).
EXTRA_LEADS: tuple[str, ...] = ("V3R", "V4R", "V5R", "V6R", "V7", "V8", "V9", "X", "Y", "Z")
KNOWN_LEADS: tuple[str, ...] = STANDARD_12 + EXTRA_LEADS

_BY_KEY = {name.lower(): name for name in KNOWN_LEADS}
# Spellings that do not reduce to a canonical name by case folding alone.
_ALIASES = {
    "mli": "I", "mlii": "II", "mliii": "III",   # modified limb leads of Holter recordings (MIT-BIH)
    "ml2": "II", "ml1": "I", "ml3": "III",
    "1": "I", "2": "II", "3": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
    "vx": "X", "vy": "Y", "vz": "Z",            # Frank leads of the PTB diagnostic database
    "d1": "I", "d2": "II", "d3": "III",          # European "DI, DII, DIII"
    "di": "I", "dii": "II", "diii": "III",
}
_NOISE = re.compile(r"\(.*?\)|\blead\b|\bderivation\b|[\s_\-.:]")


@lru_cache(maxsize=4096)  # the same few dozen spellings recur in every file of a dataset
def canonical_lead(name: str) -> str | None:
    """Return the canonical spelling of a lead name, or None when it is not an ECG lead.

    >>> canonical_lead("AVR"), canonical_lead("MLII"), canonical_lead("Lead I (Einthoven)")
    ('aVR', 'II', 'I')
    """
    key = _NOISE.sub("", name.strip().lower())
    if not key:
        return None
    return _BY_KEY.get(key) or _ALIASES.get(key)


def canonical_leads(names: list[str]) -> tuple[list[str], list[str]]:
    """Map names to canonical leads; return (canonical, unknown originals)."""
    out: list[str] = []
    unknown: list[str] = []
    for name in names:
        lead = canonical_lead(str(name))
        if lead is None:
            unknown.append(str(name))
        else:
            out.append(lead)
    return out, unknown
