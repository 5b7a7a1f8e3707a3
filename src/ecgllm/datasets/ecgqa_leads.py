"""Leads named in PTB-XL free text, read the way ECG-QA read them.

ECG-QA derives three kinds of lead-level attributes from PTB-XL text:

* noise columns (``baseline_drift``, ``static_noise``, ...) and ``extra_beats`` — short German notes such as
  ``" , I-AVR,  "`` or ``"1es, v1-3"``;
* the report text, for the 13 form statements whose report sentence names leads (templates 17–19).

`lead_positions` reproduces ECG-QA's lead-list reader (ranges, lists, region words, "alles"); `form_leads`
finds the first sentence of a report that states a form statement (one trigger pattern per statement) and
reads the leads it names. ECG-QA parsed a machine translation of the German reports into English, which is
not published; `normalize_report` therefore translates the German wording of these statements and their
lead names into the English phrases the triggers expect (see `GERMAN_PHRASES`).

Leads are returned as ``frozenset`` of canonical names (``"I"``, ``"aVR"``, ``"V1"``); None means "no lead
found", which ECG-QA treats differently from "no statement" (see `form_leads`).
"""

from __future__ import annotations

import re
from functools import lru_cache

from ecgllm.io.leads import STANDARD_12

# Lower-case lead names in ECG-QA's (and the standard) order: I, II, III, aVR, aVL, aVF, V1..V6.
_LOWER = tuple(lead.lower() for lead in STANDARD_12)
_CANONICAL = dict(zip(_LOWER, STANDARD_12))
LIMB = STANDARD_12[:6]
CHEST = STANDARD_12[6:]

# Region words and the leads they stand for (ECG-QA's table).
REGIONS: dict[str, tuple[str, ...]] = {
    "chest": CHEST, "vleads": CHEST, "precordial": CHEST, "limb": LIMB,
    "prephreal": LIMB,  # ECG-QA's key is misspelt, so "peripheral" never maps to the limb leads
    "anterior": ("V3", "V4"), "anterolateral": ("I", "aVL", "V3", "V4", "V5", "V6"),
    "anteroseptal": ("V1", "V2", "V3", "V4"), "inferior": ("II", "III", "aVF"),
    "inferolateral": ("I", "II", "III", "aVL", "aVF", "V5", "V6"), "inferoseptal": ("II", "III", "aVF", "V1", "V2"),
    "lateral": ("I", "aVL", "V5", "V6"), "highlateral": ("I", "aVL"), "standard": STANDARD_12,
    "lateralchest": ("I", "aVL", *CHEST),
}
# Region words as ECG-QA searches them inside one token (leftmost match wins).
_REGION_SEARCH = re.compile(
    r"v leads|chest|limb|anterior|antero-?\s?lateral|antero-?\s?septal|inferior|infero-?\s?lateral|"
    r"infero-?\s?septal|lateral|high-?\s?lateral|precordial|peripheral|standard|lateral-?\s?chest")

# One or more lead tokens, each with an optional separator and "and": ECG-QA's "leads" expression.
_REGION_WORDS = [r"chest", r"limb", r"anterior", r"antero-?\s?lateral", r"antero-?\s?septal", r"inferior",
                 r"infero-?\s?lateral", r"infero-?\s?septal", r"lateral", r"high-?\s?lateral", r"precordial",
                 r"prepheral", r"standard", r"infero-lateral", r"lateral-?\s?chest"]
_LEAD_TOKEN = "|".join(
    [r"v?\d"]
    + [rf"(?:lead)?\s?(?<=[^A-Za-z]){name}(?=[^A-Za-z])" for name in ("iii", "ii", "i")]
    + [rf"(?:lead)?\s?{name}" for name in ("avr", "avl", "avf")]
    + [r"v leads", r"all leads"]
    + [rf"{word}(?: lead(?:s)?)?" for word in _REGION_WORDS])
LEADS = rf"(?:(?:{_LEAD_TOKEN})\s?[/),.\-&\s]?\s?(?:and)?\s?)+"
_LEADS_RE = re.compile(LEADS)


def _lead_range(token: str) -> list[str]:
    """``"v2-6"`` -> V2..V6, ``"i-avf"`` -> I..aVF (inclusive, in the standard order); [] if unreadable."""
    ends = [("v" + e if e.isdigit() else e) for e in (part.strip() for part in re.split("--|-", token))]
    if len(ends) < 2 or ends[0] not in _LOWER or ends[1] not in _LOWER:
        return []
    return [_CANONICAL[x] for x in _LOWER[_LOWER.index(ends[0]):_LOWER.index(ends[1]) + 1]]


def _keep(token: str) -> str:
    """ECG-QA's token clean-up: typo fixes, bare numbers as chest leads, drop tokens naming no lead."""
    token = token.strip().replace("!", "1").replace("11", "ii").replace("alf", "avf")
    if token.isdigit():
        token = "v" + token
    # "any lead name as a substring" also keeps every token containing the letter i (lead I), as ECG-QA did.
    if any(name in token for name in _LOWER) or "all" in token or _REGION_SEARCH.search(token):
        return token
    return ""


@lru_cache(maxsize=65536)
def lead_positions(text: str) -> frozenset[str] | None:
    """Leads named by a lower-case note (``"i-avr"``, ``"v1 - v3"``, ``"alles"``, ``"limb leads and v6"``).

    Returns None when no lead is named (``"mittel"``, ``"noisy recording"``); ECG-QA reads such notes as
    "attribute absent".
    """
    tokens = re.split(r";|,|\.|\?|\)| and |\s", text)
    # A token ending with "-" takes the next one, one starting with "-" the previous one: "v1 - v3" -> "v1-v3".
    for _ in range(2):
        for i, token in enumerate(tokens):
            if token.endswith("-") and i + 1 < len(tokens):
                tokens[i] = token + tokens[i + 1]
            elif token.startswith("-") and i > 0:
                tokens[i] = tokens[i - 1] + token
    found: set[str] = set()
    for token in map(_keep, tokens):
        if not token:
            continue
        region = _REGION_SEARCH.search(token)
        if region:
            found.update(REGIONS.get(re.sub(r"[-\s]", "", region.group()), ()))  # "peripheral": no entry
        elif "-" in token:
            found.update(_lead_range(token))
        elif token in _CANONICAL:
            found.add(_CANONICAL[token])
        elif "alle" in token:  # German "alle(s)": every lead
            return frozenset(STANDARD_12)
    return frozenset(found) if found else None


# --------------------------------------------------------------------------------- form statements
_L = f"(?:{LEADS})"


def _alt(*options: str) -> str:
    return "(?:" + "|".join(options) + ")"


# The sentence that states each form statement in an (English) report; only the first match counts.
FORM_TRIGGERS: dict[str, str] = {
    "NDT": _alt(r"t wave(?:s)?", r"t waves are", r"t wve", r"t-change(?:s)?(?::)?", r"t change(?:s)?(?::)?",
                r"flat t", r"biphasic t", r"neg t", r"high t") + r"\s*(?:are)?\s*"
    + _alt(r"neg in", r"flattening in", r"flattening or slight inversion in", r"flat in", r"changes in",
           r"inversion in", r"low or flat in", r"generally low and are flat in", r"low in", r"flattened in",
           r"now generally flatter and are slightly inverted in", r"inverted in", r"slightly inverted in",
           r"flat or slightly inverted in", r"now slightly inverted in", r"now inverted in", r"biphasic in",
           r"abnormal in", r"abnormality in", r"sinus rhythm abnormal in", r"flat", r"flach in", r"in", r"biphas.",
           r"neg\. in", r"biphasic", r"negative in", r"term. neg in", r"high in", r"") + r"\s*" + _L,
    "NST_": _alt(_alt(r"st-t wave changes", r"st-t changes", r"t changes") + r"\s*"
                 + _alt(r"are marked in", r"persist in", r"in", r"") + r"\s*" + _L,
                 _alt(_REGION_SEARCH.pattern) + r"\s*" + _alt(r"st-t wave changes", r"st-t changes")),
    "DIG": r"digitalis\s*" + _alt(r"t pointed in", r"change in", r"changes", r"change trough", r"change r trough",
                                  r"in", r"") + r"\s*" + _L,
    "STD_": _alt(r"st segment(?:s)?", r"st-?st-senkung", r"st-thinking") + r"\s*(?:are)?\s*"
    + _alt(r"depression in", r"depression and t wave flattening in", r"depressed in", r"depressed and t wave.{0,15} in",
           r"depression", r"depression above", r"lowering in", r"lowering", r"reduction in",
           r"reduction discrete in", r"in") + r"\s*" + _L,
    "VCLVH": _alt(rf"voltages are high in {_L} suggesting lvh", rf"{_L} voltages suggest possible lv hypertrophy",
                  rf"left ventricular hypertrophy are satisfied in {_L}", rf"voltages in {_L} are at upper limit",
                  rf"voltages in {_L} of left ventricular hypertrophy",
                  rf"r wave height in {_L} suggests the possibility of left ventricular hypertrophy"),
    "QWAVE": _alt(_alt(r"q wave(?:s)?", r"q") + r"\s*(?:are)?\s*" + _alt(r"present in", r"in", r"(?:and|,).{0,55} in")
                  + r"\s*" + _L,
                  _alt(_REGION_SEARCH.pattern) + r" q waves noted"),
    "LOWT": r"t waves are\s*" + _alt(r"low or flat in", r"low in") + r"\s*" + _L,
    "NT_": r"t wave\s*" + _alt(r"flattening in", r"flattening persists in", r"flattening or slight inversion in",
                               r"flattening or inversion in", r"changes in") + r"\s*" + _L,
    "INVT": r"t wave(?:s)?\s*(?:are)?\s*"
    + _alt(r"inverted in", r"inversion in", r"flattening in.{0,30} and inverted in")
    + r"\s*" + _L,
    "LVOLT": _alt(r"low limb lead voltage", r"peripheral low voltage", r"peripheral low-voltage",
                  r"peripheral low tension", rf"low voltage in {_L}"),
    "HVOLT": _alt(r"high v lead voltages", rf"voltages in {_L}\s*are at upper limit", rf"voltages are high in {_L}"),
    "TAB_": _alt(r"t-?\s?change(?:s)?(?::)?", r"t abnormal") + r"\s*"
    + _alt(r"negative in", r"neg in", r"neg t", r"neg\. t in", r"neg\. in", r"high in", r"high t in", r"flat in",
           r"biphas", r"biphas.", r"biphas. in", r"excessive", r"in", r"") + r"\s*" + _L,
    "STE_": _alt(r"st-?\s?elevation", r"st-hebung") + r"\s*" + _alt(r"in", r"discrete in", r"over", r"discrete", r"")
    + r"\s*" + _L,
}
FORM_WITH_LEADS = tuple(FORM_TRIGGERS)
_TRIGGERS = {code: re.compile(pattern) for code, pattern in FORM_TRIGGERS.items()}

# German report wording -> the English wording a machine translation gives, for the phrases the triggers
# read. Applied in order (case-insensitive) before the triggers run; every key is German, so English
# reports are unchanged. Deliberately conservative: Schiller device sentences ("st & t abnorm,
# wahrscheinlich anterolaterale ischämie") match no English trigger either way and are left alone, and
# "st-senkung" stays German, as ECG-QA's own STD_ trigger expects German remnants there.
GERMAN_PHRASES: tuple[tuple[str, str], ...] = (
    (r"\bst-t-ver(?:ae|ä)nderung(?:en)?\b", "st-t changes"),
    (r"\bt(-\s?|\s)ver(?:ae|ä)nderung(?:en)?\b", r"t\1changes"),
    (r"\bflache[snr]?\s+t\b", "flat t"), (r"\bbiphasische[snr]?\s+t\b", "biphasic t"),
    (r"\bhohe[snr]?\s+t\b", "high t"), (r"\bt\s+abnorm\b", "t abnormal"),
    (r"\bq-zacken\b", "q waves"),
    (r"\bextremit(?:ae|ä)tenableitungen\b", "limb leads"), (r"\bbrustwandableitungen\b", "chest leads"),
    (r"\bhochlateral(?:en|e|er)?\b", "high lateral"), (r"\banterolateral(?:en|e|er)\b", "anterolateral"),
    (r"\banteroseptal(?:en|e|er)\b", "anteroseptal"), (r"\binferolateral(?:en|e|er)\b", "inferolateral"),
    (r"\banterior(?:en|e|er)\b", "anterior"), (r"\binferior(?:en|e|er)\b", "inferior"),
    (r"\blateral(?:en|e|er)\b", "lateral"), (r"\bableitungen\b", "leads"), (r"\bund\b", "and"),
)
_GERMAN = tuple((re.compile(p, re.IGNORECASE), r) for p, r in GERMAN_PHRASES)


def normalize_report(report: object, translate_german: bool = True) -> str:
    """ECG-QA's report clean-up (``ekg``->``ecg``, dots removed, one space, one final ``.``), after translating
    the German wording of lead statements when ``translate_german``."""
    text = report if isinstance(report, str) else ""  # PTB-XL reports are lower case already
    if translate_german:
        for pattern, english in _GERMAN:
            text = pattern.sub(english, text)
    text = text.replace("ekg", "ecg").replace(".", "").replace("4.46", "")
    return " ".join((text + ".").split())


def form_leads(report: str, code: str) -> frozenset[str]:
    """Leads of form statement ``code`` named by a normalised report (`normalize_report`): the first sentence
    matching the statement's trigger, every lead run inside it. Empty when the report states no leads."""
    match = _TRIGGERS[code].search(report)
    if match is None:
        return frozenset()
    leads: set[str] = set()
    for run in _LEADS_RE.finditer(match.group()):
        found = lead_positions(run.group())
        if found:
            leads |= found
    return frozenset(leads)
