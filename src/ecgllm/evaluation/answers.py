"""Answer normalisation and parsing shared by every task.

A free-text or list answer becomes a set of canonical answer strings (the spelling of the task's answer
vocabulary) or ``None`` when it cannot be parsed. Unparseable answers are never mapped to a random option:
scorers count them as wrong and report how many there were.

Matching is case-, whitespace- and punctuation-insensitive, knows common synonyms and abbreviations of SCP
statements ("AF", "afib" -> "atrial fibrillation"), lead names ("V1", "lead v1" -> "lead V1"), yes/no/not sure
phrasings, and lists in any order with any separator (",", ";", "and", "&", new lines).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from ecgllm.io.leads import STANDARD_12

YES, NO, NOT_SURE = "yes", "no", "not sure"

# alias -> canonical answers it may mean; the one in the task's options wins (e.g. "normal" is "within the
# normal range" for an interval question and "normal heart axis" for an axis question).
ALIASES: dict[str, tuple[str, ...]] = {
    # rhythm
    "af": ("atrial fibrillation",), "afib": ("atrial fibrillation",), "a fib": ("atrial fibrillation",),
    "atrial fib": ("atrial fibrillation",), "aflt": ("atrial flutter",), "afl": ("atrial flutter",),
    "a flutter": ("atrial flutter",), "sr": ("sinus rhythm",), "nsr": ("sinus rhythm",),
    "normal sinus rhythm": ("sinus rhythm",), "sinus": ("sinus rhythm",), "stach": ("sinus tachycardia",),
    "sinus tach": ("sinus tachycardia",), "sbrad": ("sinus bradycardia",), "sinus brady": ("sinus bradycardia",),
    "sarrh": ("sinus arrhythmia",), "svt": ("supraventricular tachycardia",),
    "svtac": ("supraventricular tachycardia",), "pace": ("normal functioning artificial pacemaker",),
    "paced rhythm": ("normal functioning artificial pacemaker",),
    "pacemaker": ("normal functioning artificial pacemaker",),
    "bigu": ("bigeminal pattern (unknown origin, supraventricular, or ventricular)",),
    "bigeminy": ("bigeminal pattern (unknown origin, supraventricular, or ventricular)",),
    "bigeminal pattern": ("bigeminal pattern (unknown origin, supraventricular, or ventricular)",),
    # conduction
    "lbbb": ("complete left bundle branch block",), "clbbb": ("complete left bundle branch block",),
    "left bundle branch block": ("complete left bundle branch block",),
    "rbbb": ("complete right bundle branch block",), "crbbb": ("complete right bundle branch block",),
    "right bundle branch block": ("complete right bundle branch block",),
    "ilbbb": ("incomplete left bundle branch block",), "incomplete lbbb": ("incomplete left bundle branch block",),
    "irbbb": ("incomplete right bundle branch block",), "incomplete rbbb": ("incomplete right bundle branch block",),
    "1avb": ("first degree av block",), "1st degree av block": ("first degree av block",),
    "first degree atrioventricular block": ("first degree av block",), "1 avb": ("first degree av block",),
    "lafb": ("left anterior fascicular block",), "left anterior hemiblock": ("left anterior fascicular block",),
    "lpfb": ("left posterior fascicular block",), "left posterior hemiblock": ("left posterior fascicular block",),
    "ivcd": ("non-specific intraventricular conduction disturbance (block)",),
    "lpr": ("prolonged pr interval",), "long pr": ("prolonged pr interval",),
    "wpw": ("wolf-parkinson-white syndrome",),
    # hypertrophy / enlargement
    "lvh": ("left ventricular hypertrophy",), "rvh": ("right ventricular hypertrophy",),
    "lae": ("left atrial overload/enlargement",), "lao": ("left atrial overload/enlargement",),
    "left atrial enlargement": ("left atrial overload/enlargement",),
    "left atrial overload": ("left atrial overload/enlargement",),
    "rae": ("right atrial overload/enlargement",), "rao": ("right atrial overload/enlargement",),
    "right atrial enlargement": ("right atrial overload/enlargement",),
    "right atrial overload": ("right atrial overload/enlargement",),
    "vclvh": ("voltage criteria (qrs) for left ventricular hypertrophy",),
    "hvolt": ("high qrs voltage",), "lvolt": ("low qrs voltages in the frontal and horizontal leads",),
    "low voltage": ("low qrs voltages in the frontal and horizontal leads",),
    "low qrs voltage": ("low qrs voltages in the frontal and horizontal leads",),
    # ST-T
    "lngqt": ("long qt-interval",), "long qt": ("long qt-interval",), "prolonged qt": ("long qt-interval",),
    "dig": ("digitalis effect",), "digitalis": ("digitalis effect",), "ndt": ("non-diagnostic t abnormalities",),
    "nst": ("non-specific st changes",), "isc": ("non-specific ischemic",), "ischemia": ("non-specific ischemic",),
    "std": ("non-specific st depression",), "st depression": ("non-specific st depression",),
    "ste": ("non-specific st elevation",), "st elevation": ("non-specific st elevation",),
    "invt": ("inverted t-waves",), "inverted t waves": ("inverted t-waves",), "t wave inversion": ("inverted t-waves",),
    "lowt": ("low amplitude t-wave",), "tab": ("t-wave abnormality",), "nt": ("non-specific t-wave changes",),
    "qwave": ("q waves present",), "q waves": ("q waves present",), "abqrs": ("abnormal qrs",),
    # ectopy
    "pvc": ("ventricular premature complex",), "pvcs": ("ventricular premature complex",),
    "premature ventricular contraction": ("ventricular premature complex",),
    "premature ventricular contractions": ("ventricular premature complex",),
    "pac": ("atrial premature complex",), "pacs": ("atrial premature complex",),
    "premature atrial contraction": ("atrial premature complex",),
    "premature atrial contractions": ("atrial premature complex",),
    "ves": ("ventricular extrasystoles",), "sves": ("supraventricular extrasystoles",),
    # myocardial infarction by location
    "imi": ("myocardial infarction in inferior leads",), "inferior mi": ("myocardial infarction in inferior leads",),
    "inferior myocardial infarction": ("myocardial infarction in inferior leads",),
    "asmi": ("myocardial infarction in anteroseptal leads",),
    "anteroseptal mi": ("myocardial infarction in anteroseptal leads",),
    "anteroseptal myocardial infarction": ("myocardial infarction in anteroseptal leads",),
    "ami": ("myocardial infarction in anterior leads",), "anterior mi": ("myocardial infarction in anterior leads",),
    "almi": ("myocardial infarction in anterolateral leads",),
    "anterolateral mi": ("myocardial infarction in anterolateral leads",),
    "lmi": ("myocardial infarction in lateral leads",), "lateral mi": ("myocardial infarction in lateral leads",),
    "ilmi": ("myocardial infarction in inferolateral leads",),
    "inferolateral mi": ("myocardial infarction in inferolateral leads",),
    "ipmi": ("myocardial infarction in inferoposterior leads",),
    "iplmi": ("myocardial infarction in inferoposterolateral leads",),
    "pmi": ("myocardial infarction in posterior leads",), "posterior mi": ("myocardial infarction in posterior leads",),
    # superclasses
    "mi": ("myocardial infarction",), "infarction": ("myocardial infarction",),
    "cd": ("conduction disturbance",), "conduction disturbances": ("conduction disturbance",),
    "hyp": ("hypertrophy",), "sttc": ("st/t change",), "st t changes": ("st/t change",), "st changes": ("st/t change",),
    "st t abnormality": ("st/t change",),
    # noise
    "baseline wander": ("baseline drift",), "baseline wandering": ("baseline drift",),
    "electrode problems": ("electrodes problems",), "electrode problem": ("electrodes problems",),
    "lead problems": ("electrodes problems",),
    # heart axis
    "normal axis": ("normal heart axis",), "normal": ("within the normal range", "normal heart axis"),
    "lad": ("left axis deviation",), "left axis": ("left axis deviation",),
    "rad": ("right axis deviation",), "right axis": ("right axis deviation",),
    "extreme axis": ("extreme axis deviation",), "northwest axis": ("extreme axis deviation",),
    # infarction stage
    "early": ("early stage of myocardial infarction",), "acute": ("early stage of myocardial infarction",),
    "middle": ("middle stage of myocardial infarction",), "old": ("old stage of myocardial infarction",),
    "unknown": ("unknown stage of myocardial infarction",),
    # numeric features and their ranges
    "qtc": ("qt corrected",), "corrected qt": ("qt corrected",), "qt": ("qt interval",), "pr": ("pr interval",),
    "qrs": ("qrs duration",), "rr": ("rr interval",), "p wave duration": ("p duration",),
    "high": ("above the normal range",), "above normal": ("above the normal range",),
    "prolonged": ("above the normal range",), "increased": ("above the normal range",),
    "above": ("above the normal range",), "low": ("below the normal range",),
    "below normal": ("below the normal range",), "short": ("below the normal range",),
    "shortened": ("below the normal range",), "decreased": ("below the normal range",),
    "below": ("below the normal range",), "within normal limits": ("within the normal range",),
    "within normal range": ("within the normal range",), "normal range": ("within the normal range",),
    # nothing
    "nothing": ("none", "none of myocardial infarction"), "no abnormality": ("none",), "none of them": ("none",),
    "no myocardial infarction": ("none of myocardial infarction",), "no mi": ("none of myocardial infarction",),
}
_YES = ("yes", "y", "true", "correct", "present", "positive", "it does", "there is", "there are", "affirmative")
_NO = ("no", "n", "false", "absent", "negative", "it does not", "it doesn't", "there is no", "there are no",
       "does not", "doesn't", "not present")
_NOT_SURE = ("not sure", "unsure", "uncertain", "unknown", "cannot tell", "can't tell", "cannot be determined",
             "can't be determined", "i don't know", "don't know", "not certain", "indeterminate")
_SEPARATORS = re.compile(r"\s*(?:,|;|\n|\band\b|&|\bplus\b|\bas well as\b)\s*")
_LEAD_NAMES = {name.lower(): name for name in STANDARD_12}
_LEAD_WORDS = {"1": "I", "2": "II", "3": "III", "i": "I", "ii": "II", "iii": "III"}
_PREFIXES = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is)?\s*[:\-]?\s*|^(?:the|a|an)\s+")


def key(text: str) -> str:
    """Comparison key: lower case, every run of punctuation/space -> one space."""
    return " ".join(re.sub(r"[^0-9a-z°]+", " ", text.lower().replace("’", "'").replace("'", "")).split())


@dataclass(frozen=True)
class ParsedAnswer:
    answers: frozenset[str] | None      # None: could not be parsed
    raw: str

    @property
    def parsed(self) -> bool:
        return self.answers is not None


def _lead(piece: str) -> str | None:
    """'v1', 'lead v1', 'leads avr', 'lead 2' -> the canonical ECG-QA lead answer ('lead V1', ...)."""
    text = re.sub(r"^leads?\s+", "", piece)
    name = _LEAD_NAMES.get(text) or _LEAD_WORDS.get(text)
    if name is None:
        return None
    return f"lead {name}"


def _yes_no(text: str) -> str | None:
    t = key(text)
    for answer, phrases in ((NOT_SURE, _NOT_SURE), (NO, _NO), (YES, _YES)):  # "not sure" before "no"
        for phrase in phrases:
            if t == phrase or t.startswith(phrase + " "):
                return answer
    return None


@lru_cache(maxsize=256)
def _option_keys(options: tuple[str, ...]) -> dict[str, str]:
    return {key(o): o for o in options}


def _canonical(piece: str, options: tuple[str, ...]) -> str | None:
    keys = _option_keys(options)
    k = key(_PREFIXES.sub("", piece.strip().lower()))
    if k in keys:
        return keys[k]
    if k.endswith("s") and k[:-1] in keys:  # plurals: "atrial premature complexes"
        return keys[k[:-1]]
    for candidate in ALIASES.get(k, ()):
        if key(candidate) in keys:
            return keys[key(candidate)]
    lead = _lead(k)
    if lead is not None and key(lead) in keys:
        return keys[key(lead)]
    return None


@lru_cache(maxsize=200_000)
def _parse_text(text: str, options: tuple[str, ...]) -> frozenset[str] | None:
    keys = _option_keys(options)
    if set(keys) <= {YES, NO, key(NOT_SURE)}:
        answer = _yes_no(text)
        return None if answer is None or answer not in options else frozenset([answer])
    cleaned = text.strip().rstrip(".!").strip()
    whole = _canonical(cleaned, options)  # options may contain separators themselves ("st/t change")
    if whole is not None:
        return frozenset([whole])
    lowered, found = cleaned.lower(), []
    for option in options:  # options that contain a separator themselves are taken out before splitting
        if _SEPARATORS.search(option) and option.lower() in lowered:
            lowered = lowered.replace(option.lower(), ",")
            found.append(option)
    pieces = [p for p in _SEPARATORS.split(lowered) if p.strip()]
    if not pieces and not found:
        return None
    lead_context = False
    for piece in pieces:
        piece = piece.strip().rstrip(".!")
        lead_context = lead_context or piece.startswith("lead")
        answer = _canonical(piece, options)
        if answer is None and lead_context:  # "leads V1, V2 and V3"
            answer = _canonical(f"lead {piece}", options)
        if answer is None:
            return None
        found.append(answer)
    return frozenset(found)


def parse_answer(prediction: str | Sequence[str] | None, options: Sequence[str]) -> ParsedAnswer:
    """Parse a model's answer against the task's answer options (canonical spellings)."""
    opts = tuple(options)
    if prediction is None:
        return ParsedAnswer(None, "")
    if isinstance(prediction, str):
        return ParsedAnswer(_parse_text(prediction, opts), prediction)
    answers: set[str] = set()
    for item in prediction:
        if not isinstance(item, str):
            return ParsedAnswer(None, repr(prediction))
        parsed = _parse_text(item, opts)
        if parsed is None:
            return ParsedAnswer(None, repr(list(prediction)))
        answers |= parsed
    return ParsedAnswer(frozenset(answers) if answers else None, repr(list(prediction)))


_LETTER = re.compile(r"^\s*(?:answer\s*[:\-]?\s*|option\s+)?\(?([a-z])\)?(?:[.):\s]|$)", re.IGNORECASE)


def parse_choice(prediction: str, options: Sequence[str]) -> int | None:
    """Index of the option a multiple-choice answer picks ("B", "(b)", "Answer: B", the option's text, or
    text that contains exactly one option), or None when it picks none or several."""
    if not isinstance(prediction, str):
        return None
    keys = [key(o) for o in options]
    k = key(_PREFIXES.sub("", prediction.strip().lower()))
    if k in keys:
        return keys.index(k)
    match = _LETTER.match(prediction)
    if match:
        index = ord(match.group(1).lower()) - ord("a")
        rest = key(prediction[match.end():])
        if 0 <= index < len(options) and (not rest or rest == keys[index] or len(match.group(0).strip()) <= 3):
            return index
    contained = [i for i, ok in enumerate(keys) if ok and re.search(rf"\b{re.escape(ok)}\b", k)]
    return contained[0] if len(contained) == 1 else None
