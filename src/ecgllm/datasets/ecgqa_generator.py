"""Generate ECG-QA-style samples (official JSON schema) for any labelled collection, and re-derive the
answer of an official sample from our labels (used to check the generator against the official data).

Every template's answer comes from `answer_for`; generation only chooses records, values and leads. So
what we generate and what we check against the official release are computed by the same code. The rules
are ECG-QA's own (see `ecgllm.datasets.ecgqa_attributes` and ``benchmarks/ecgqa_agreement.py``).

Generated samples carry ``generator_version`` (`GENERATOR_VERSION`): data made by an older generator, whose
answers differ from the official meaning, can be recognised and regenerated.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ecgllm.datasets.ecgqa_attributes import (
    CODE_OF_NAME, DIAGNOSTIC_CODES, FEATURES, NORMAL_RANGES, RANGE_NAMES, SUPERCLASS_NAMES, RecordAttributes,
)
from ecgllm.datasets.ecgqa_templates import Template, load_templates, pattern_regex
from ecgllm.io.leads import STANDARD_12

# 1: answers before ECG-QA's rules were reproduced (likelihood thresholds, PTB-XL axis column, fitted ranges).
# 2: ECG-QA's rules (issue 16): presence at any likelihood, lead statements, measured axis and features.
GENERATOR_VERSION = 2
WITHIN = "within the normal range"
NONE = "none"
# Numeric comparison queries ("What numeric features of the second ECG now have become normal / are now considered
# abnormal / are still abnormal as compared to the first ECG?") that `generate(answered_comparisons=True)` asks only
# of pairs whose answer names something, as ECG-QA asked its own.
ANSWERED_COMPARISONS = (68, 69, 70)
_LEAD_IN_QUESTION = re.compile(r"\blead (I{1,3}|aV[RLF]|V[1-6])(?![0-9A-Za-z])")
_DIAGNOSTIC = frozenset(DIAGNOSTIC_CODES)
_SUPERCLASSES = frozenset(SUPERCLASS_NAMES.values())
# The "attribute" field of value-less yes/no templates in the official data.
ANY_ATTRIBUTE = {12: "any kind of abnormal symptoms", 13: "any diagnostic symptoms", 14: "any diagnostic symptoms",
                 15: "any form-related symptoms", 16: "any rhythm-related symptoms", 28: "any kind of noises",
                 29: "any kind of noises", 35: "any kind of extra systoles", 2: "normal ecg"}
# Comparison yes/no questions are only asked when the first ECG has the stated status (ECG-QA samples them
# conditioned on it): "has X been resolved?" presumes X in the first ECG.
_FIRST_PRESENT = {"resolved": True, "remain": True, "new": False, "absent": False}
_FIRST_NORMAL = {"become_normal": False, "still_abnormal": False, "become_abnormal": True, "still_normal": True}
# Answer-group sampling (``answer_groups=True``) covers the single-ECG choose and query templates whose answers come
# from labels; numeric features and the heart axis keep the record-first draw.
_GROUPED_SCOPES_EXCLUDED = ("numeric_range", "numeric_in_range", "heart_axis")
# Answer weights of the answer-group draw: an answer weighs min(its records, quota). Modelled on ECG-QA's last public
# generation script: n records of each answer of a choose question and 2n of a query one, n = 5 in the train split and
# 3 in valid and test, so the quota follows the split the questions are drawn for (`generate(quota_split=...)`; the
# pool is that split's records, whose fewer records per answer give "none" more weight). The released files hold more
# records of one answer for some query templates (12-43 in the official samples of templates 11, 25, 32-34, 38), so
# these weights overstate rare query answers there. "none" counts as one answer among the others.
ANSWER_QUOTA = {"train": {"choose": 5, "query": 10}, "valid": {"choose": 3, "query": 6},
                "test": {"choose": 3, "query": 6}}


class IncompatibleDrawError(ValueError):
    """Two ways of drawing questions that cannot be combined (e.g. intervention sampling with paired draws)."""


def _pick(rng: np.random.Generator, seq):
    """One element of a sequence (rng.choice converts lists to arrays on every call: 20x slower)."""
    return seq[int(rng.integers(len(seq)))]


def ranges_for(feature: str) -> tuple[str, ...]:
    """Range classes a feature can take (ECG-QA's p duration has no lower bound, hence no "below")."""
    lo = NORMAL_RANGES[feature][0]
    return RANGE_NAMES[1:] if lo == -np.inf else RANGE_NAMES


def _lead_order(leads) -> list[str]:
    return [f"lead {x}" for x in STANDARD_12 if x in leads]


def _present(t: Template, a: RecordAttributes, lead: str | None = None,
             value: str | None = None) -> set[str] | None:
    """Values of the template's universe that record ``a`` shows; None when its labels do not cover it."""
    s = t.scope
    allowed = t.value_set
    if s in ("diagnostic_incl", "form", "rhythm", "statement"):
        return {v for v in a.statements if v in allowed}
    if s == "diagnostic_excl":
        relevant = {v: p for v, p in a.statements.items() if v in allowed}
        if any(np.isnan(p) for p in relevant.values()):
            return None
        return {v for v, p in relevant.items() if p in (0.0, 100.0)}  # 0.0: stated, likelihood not given
    if s == "statement_or_superclass":
        return set(a.statements) | set(a.superclasses)
    if s == "superclass":
        return set(a.superclasses)
    if s == "normal":
        return {"normal ecg"} if a.normal else set()
    if s == "abnormal":  # any code other than NORM and SR, the 11 codes ECG-QA never names included
        return {c for c in a.codes if c not in ("NORM", "SR")}
    if s in ("form_lead", "form_leads"):
        if a.form_leads is None:
            return None
        if s == "form_lead":
            return {v for v, leads in a.form_leads.items() if lead in leads}
        return set(_lead_order(a.form_leads.get(value or "", ())))
    if s == "heart_axis":
        return None if a.heart_axis is None else {a.heart_axis}
    if s == "stage":
        return None if a.stages is None else set(a.stages)
    if s == "extra_systole":
        return None if a.extra_systoles is None else set(a.extra_systoles)
    if s in ("noise", "noise_lead", "noise_leads"):
        if a.noise is None:
            return None
        if s == "noise":
            return set(a.noise)
        if s == "noise_lead":
            return {n for n, leads in a.noise.items() if lead in leads}
        return set(_lead_order(a.noise.get(value or "", ())))
    if s == "numeric_range":
        return None if value not in a.numeric else {a.numeric[value]}
    if s == "numeric_in_range":
        return {f for f, r in a.numeric.items() if r == value}
    return None


def _verify3(a: RecordAttributes, value: str) -> list[str] | None:
    """Template 1: diagnostic codes answer yes (likelihood 0 or 100), not sure (15-80) or no; other codes and
    the superclasses answer by presence."""
    if value in _SUPERCLASSES:
        return ["yes" if value in a.superclasses else "no"]
    if value not in a.statements:
        return ["no"]
    if CODE_OF_NAME.get(value) not in _DIAGNOSTIC:
        return ["yes"]
    p = a.statements[value]
    if np.isnan(p):
        return None
    return ["yes"] if p in (0.0, 100.0) else ["not sure"] if p in (15.0, 35.0, 50.0, 80.0) else ["no"]


def answer_for(t: Template, records: list[RecordAttributes], values: list[str] | None = None,
               lead: str | None = None, strict: bool = True) -> list[str] | None:
    """The answer of template ``t`` about ``records`` (one, or two for comparisons) and the values the question
    names, in the order of the pattern's placeholders; None when the question is not asked of these records
    (our labels do not cover it, or ECG-QA never asks it in this situation).

    A comparison yes/no question presumes a status in the first ECG ("has X been resolved?": X was there) and
    its answer depends on the second ECG only. ``strict`` (generation) refuses questions whose presumption
    our labels contradict; ``strict=False`` (checking official samples) answers them anyway, so that a
    disagreement about the first ECG is scored, not skipped."""
    values = values or []
    if t.question_type.startswith("comparison"):
        return _compare(t, records[0], records[1], values, strict)
    a = records[0]
    if t.op == "verify3":
        return _verify3(a, values[0]) if values else None
    if t.op == "verify_any" and t.template_id == 35:
        flag = a.any_extra_systole
        return None if flag is None else ["yes" if flag else "no"]
    # Some scopes are narrowed by the first named value (the statement or noise whose leads are asked, the
    # feature whose range is asked, the range whose features are asked); the rest are the options offered.
    narrowing = t.scope in ("form_leads", "noise_leads", "numeric_range", "numeric_in_range")
    present = _present(t, a, lead=lead, value=values[0] if narrowing and values else None)
    options = values[1:] if t.scope == "numeric_range" else values
    if t.scope == "form_lead" and t.op == "verify" and values:
        # a statement present without any lead in the report is never asked per lead
        if a.form_leads is not None and values[0] in a.form_leads and not a.form_leads[values[0]]:
            return None
    if t.scope == "form_leads" and a.form_leads is not None and values and values[0] in a.form_leads \
            and not a.form_leads[values[0]]:
        return None
    if present is None:
        measured = a.axis_measured if t.scope == "heart_axis" else a.measured
        if t.op == "choose" and t.scope in ("numeric_range", "heart_axis") and measured and len(options) >= 2:
            return [NONE]  # a measured record with an undefined value shows neither offered option
        return None
    if t.scope == "numeric_in_range" and not a.measured:
        return None
    if t.op == "verify":
        if t.scope == "normal":
            return ["yes" if present else "no"]
        return ["yes" if options and options[0] in present else "no"] if options else None
    if t.op == "verify_any":
        return ["yes" if present else "no"]
    if t.op == "choose":
        return _choose_answer(present, options) if len(options) >= 2 else None
    if t.op == "query":
        if narrowing:
            if t.scope in ("form_leads", "noise_leads"):
                return sorted(present, key=_lead_rank) or [NONE]
            return sorted(present, key=FEATURES.index if t.scope == "numeric_in_range" else None) or [NONE]
        chosen = [v for v in t.values if v in present]
        if t.template_id in (22, 25):  # one class per record; a record with none is not asked
            return chosen or None
        return chosen or [NONE]
    return None


def _choose_answer(present: set[str] | frozenset[str], options: list[str]) -> list[str]:
    """A choose question's answer: the offered options the record shows, in the question's order, or "none"."""
    return [v for v in options[:2] if v in present] or [NONE]


def _lead_rank(name: str) -> int:
    return STANDARD_12.index(name.removeprefix("lead "))


def _compare(t: Template, a: RecordAttributes, b: RecordAttributes, values: list[str],
             strict: bool = True) -> list[str] | None:
    if t.scope == "numeric":
        if not (a.measured and b.measured):
            return None
        features = [f for f in ([values[0]] if t.kind == "verify" and values else FEATURES)
                    if f in a.numeric and f in b.numeric]  # a feature counts where both ECGs define it
        if t.kind == "verify":
            if not features:
                return None
            if strict and (a.numeric[features[0]] == WITHIN) != _FIRST_NORMAL[t.op]:
                return None
            normal_now = b.numeric[features[0]] == WITHIN
            return ["yes" if normal_now == (t.op in ("become_normal", "still_normal")) else "no"]
        hits = []
        for f in features:
            na, nb = a.numeric[f] == WITHIN, b.numeric[f] == WITHIN
            if {"become_normal": not na and nb, "become_abnormal": na and not nb,
                    "still_abnormal": not na and not nb, "still_normal": na and nb}[t.op]:
                hits.append(f)
        return hits or [NONE]
    allowed = t.value_set
    sa = {v for v in a.statements if v in allowed}
    sb = {v for v in b.statements if v in allowed}
    if t.kind == "verify":
        if not values or values[0] not in allowed or (strict and (values[0] in sa) != _FIRST_PRESENT[t.op]):
            return None
        return ["yes" if (values[0] in sb) == (t.op in ("new", "remain")) else "no"]
    result = {"resolved": sa - sb, "new": sb - sa, "remain": sa & sb}[t.op]
    return [v for v in t.values if v in result] or [NONE]


def fill(pattern: str, values: list[str], lead: str | None) -> str:
    """Put the chosen values into a template pattern in placeholder order (``${lead}`` reads "lead aVL")."""
    text = pattern
    if lead is not None:
        text = text.replace("${lead}", f"lead {lead}")
    names = re.findall(r"\$\{(\w+?)\}", text)
    for i, name in enumerate(names):
        text = text.replace("${" + name + "}", values[i] if i < len(values) else "", 1)
    return text


def fill_named(pattern: str, named: dict[str, str], lead: str | None) -> str:
    """Put values into any wording of a template by placeholder name (paraphrases reorder placeholders)."""
    text = pattern.replace("${lead}", f"lead {lead}") if lead is not None else pattern
    return re.sub(r"\$\{(\w+?)\}", lambda m: named.get(m.group(1), ""), text)


def _attribute_field(t: Template, values: list[str]) -> list[str] | None:
    """The official ``attribute`` field: the named values, or the candidate universe of a query."""
    if t.question_type.startswith("comparison"):
        return None
    if t.template_id in ANY_ATTRIBUTE:
        return [ANY_ATTRIBUTE[t.template_id]]
    if t.scope == "numeric_range":
        feature = values[0]
        ranges = values[1:] if t.kind != "query" else list(ranges_for(feature))
        return [f"{r} of {feature}" for r in ranges]
    if t.scope == "numeric_in_range":
        return [f"{values[0]} of {f}" for f in FEATURES if values[0] in ranges_for(f)]
    if t.kind == "query" and t.scope not in ("form_leads", "noise_leads"):
        return list(t.values)
    return list(values)


def sample_values(t: Template, sample) -> tuple[list[str], str | None] | None:
    """Values (in the pattern's placeholder order) and lead an official sample names; None if unreadable.

    Template-version questions are read against the template's pattern; paraphrased ones from the sample's
    ``attribute`` field and the value names their text contains.
    """
    names = t.placeholders
    match = pattern_regex(t.pattern).match(sample.question)
    if match is not None:
        found = match.groupdict()
        lead = found.pop("lead", None)
        values = [found[n] for n in names]
        known = set(RANGE_NAMES) | set(FEATURES) if t.scope.startswith("numeric") else t.value_set
        # a value holding " or " (bigeminal pattern (..., or ventricular)) can split a choose question wrongly
        if all(v in known for v in values):
            return values, (lead.removeprefix("lead ") if lead else None)
    lead_match = _LEAD_IN_QUESTION.findall(sample.question)
    lead = lead_match[-1] if lead_match and "${lead}" in t.pattern else None
    if "${lead}" in t.pattern and lead is None:
        return None
    if not names:
        return [], lead
    attribute = list(sample.attribute or [])
    if t.scope.startswith("numeric") and not t.question_type.startswith("comparison"):
        pairs = [a.split(" of ", 1) for a in attribute if " of " in a]
        if not pairs:
            return None
        features = {f for _, f in pairs}
        ranges = [r for r, _ in pairs]
        if t.scope == "numeric_in_range":
            return ([ranges[0]], lead) if len(set(ranges)) == 1 else None
        if len(features) != 1:
            return None
        feature = features.pop()
        return [feature] + (ranges if t.kind != "query" else []), lead
    if attribute and t.kind != "query" or t.scope in ("form_leads", "noise_leads"):
        return (attribute[:len(names)], lead) if len(attribute) >= len(names) else None
    vocabulary = FEATURES if t.scope == "numeric" else t.values
    named = [v for v in vocabulary if v in sample.question]
    named = [v for v in named if not any(v != w and v in w for w in named)]  # "mi" inside "mi in ... leads"
    if len(named) != len(names):
        return None
    return sorted(named, key=sample.question.index), lead


def regenerate_answer(sample, attributes: dict[int, RecordAttributes]) -> list[str] | None:
    """Our answer for an official sample (same template, ECGs and values); None if not covered."""
    from ecgllm.datasets.ecgqa_check import regenerate

    return regenerate(sample, attributes).answer


@dataclass
class GeneratorPools:
    """Candidate records and pairs, precomputed once per pool of ECG ids."""

    ids: list[int]
    consecutive: list[tuple[int, int]]
    patients: dict[int, int]
    with_patient: list[int]


class ECGQAGenerator:
    """Seeded, deterministic ECG-QA-style sample generator over a pool of records (one split)."""

    def __init__(self, attributes: dict[int, RecordAttributes], pool: list[int] | set[int],
                 templates: dict[int, Template] | None = None, strata: dict[int, str] | None = None) -> None:
        self.attributes = attributes
        self.strata = strata or {}          # severity stratum per record (intervention sampling)
        self._intervention = False
        self._stratum_prior: dict[str, float] = {}
        self.templates = {k: t for k, t in (templates or load_templates()).items() if t.supported}
        ids = sorted(int(i) for i in pool if int(i) in attributes)
        by_patient: dict[int, list[RecordAttributes]] = defaultdict(list)
        for i in ids:
            if attributes[i].patient_id is not None:
                by_patient[attributes[i].patient_id].append(attributes[i])
        consecutive = []
        for records in by_patient.values():
            records.sort(key=lambda r: (r.recorded or "", r.ecg_id))  # time order; ecg_id breaks ties
            # every (earlier, later) pair of one patient: ECG-QA's pairs are not always adjacent
            consecutive += [(x.ecg_id, y.ecg_id) for k, x in enumerate(records) for y in records[k + 1:]]
        patients = {i: attributes[i].patient_id for i in ids if attributes[i].patient_id is not None}
        self.pools = GeneratorPools(ids=ids, consecutive=consecutive, patients=patients,
                                    with_patient=sorted(patients))
        self._covered: dict[int, np.ndarray] = {}
        self._groups: dict[tuple, dict[tuple[str, ...], np.ndarray]] = {}
        self._present_sets: dict[tuple[int, str | None], dict[int, frozenset[str] | None]] = {}

    @staticmethod
    def _covers(t: Template, a: RecordAttributes) -> bool:
        """Can template ``t`` be asked about record ``a`` at all?"""
        s = t.scope
        if s == "numeric_range":
            return bool(a.numeric)
        if s == "numeric_in_range":
            return len(a.numeric) == len(FEATURES)  # a missing measurement would read as "not in range"
        if s in ("form_lead", "form_leads"):
            return a.form_leads is not None
        if s.startswith("noise"):
            return a.noise is not None
        if s == "extra_systole":
            return a.extra_systoles is not None
        if s == "stage":
            return a.stages is not None and (t.template_id != 25 or bool(a.stages))
        if s == "heart_axis":
            return a.heart_axis is not None
        if s == "diagnostic_excl":
            return _present(t, a) is not None
        return True

    def _candidates(self, t: Template) -> np.ndarray:
        if t.template_id not in self._covered:
            ids = [i for i in self.pools.ids if self._covers(t, self.attributes[i])]
            self._covered[t.template_id] = np.asarray(ids, dtype=np.int64)
        return self._covered[t.template_id]

    def _pick_values(self, t: Template, a: RecordAttributes, rng: np.random.Generator,
                     lead: str | None) -> list[str]:
        if t.scope == "numeric_range":
            feature = _pick(rng, sorted(a.numeric))
            ranges = ranges_for(feature)
            if t.kind == "verify":
                if self._intervention:  # the asked range must not depend on the record
                    return [feature, _pick(rng, ranges)]
                return [feature, a.numeric[feature] if rng.random() < 1 / 3 else _pick(rng, ranges)]
            if t.kind == "choose":
                first = _pick(rng, ranges)
                return [feature, first, _pick(rng, [r for r in ranges if r != first])]
            return [feature]
        if t.scope == "numeric_in_range":
            return [_pick(rng, RANGE_NAMES)]
        if not t.placeholders:
            return []
        options = list(t.values)
        if t.scope in ("form_leads", "noise_leads"):
            shown = a.form_leads if t.scope == "form_leads" else a.noise
            present = sorted(v for v, leads in (shown or {}).items() if leads)
        else:
            present = sorted(_present(t, a, lead=lead) or set())
        present = [v for v in present if v in t.value_set]
        biased = present and not self._intervention and rng.random() < 0.5
        first = _pick(rng, present) if biased else _pick(rng, options)
        if t.kind == "choose":
            second = _pick(rng, [o for o in options if o != first])
            return [first, second] if rng.random() < 0.5 else [second, first]
        return [first]

    def _comparison(self, t: Template, rng: np.random.Generator) -> tuple[list[int], list[str]] | None:
        if t.question_type.startswith("comparison_consecutive"):
            if not self.pools.consecutive:
                return None
            pair = self.pools.consecutive[int(rng.integers(len(self.pools.consecutive)))]
        else:
            ids = self.pools.with_patient
            if len(ids) < 2:
                return None
            for _ in range(20):
                x, y = _pick(rng, ids), _pick(rng, ids)
                if self.pools.patients[x] != self.pools.patients[y]:
                    break
            else:
                return None
            pair = (x, y)
        if t.kind != "verify":
            return list(pair), []
        a, b = (self.attributes[i] for i in pair)
        if t.scope == "numeric":
            both = sorted(a.numeric.keys() & b.numeric.keys())
            return (list(pair), [_pick(rng, both)]) if both else None
        # the question presumes a status in the first ECG: pick a value that has it
        wanted = _FIRST_PRESENT[t.op]
        pool = [v for v in t.values if (v in a.statements) == wanted]
        if not pool:
            return None
        return list(pair), [_pick(rng, pool)]

    @staticmethod
    def groups_apply(t: Template) -> bool:
        """Does answer-group sampling cover template ``t``?"""
        return (t.question_type.startswith("single") and t.kind in ("choose", "query")
                and t.scope not in _GROUPED_SCOPES_EXCLUDED)

    def _answer_groups(self, t: Template, values: list[str], lead: str | None) -> dict[tuple[str, ...], np.ndarray]:
        """Every record of the pool that template ``t`` can be asked about with these values and lead, grouped by
        its answer (cached per question, as int32 arrays: a few thousand questions of a pool of ~12,000 records)."""
        key = (t.template_id, tuple(values), lead)
        if key not in self._groups:
            groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
            if t.kind == "choose":  # many option pairs: each record's present values are computed once
                sets = self._present_sets.get((t.template_id, lead))
                if sets is None:
                    sets = {}
                    for i in self._candidates(t):
                        present = _present(t, self.attributes[int(i)], lead=lead)
                        sets[int(i)] = None if present is None else frozenset(present)
                    self._present_sets[(t.template_id, lead)] = sets
                for i, present in sets.items():
                    if present is not None:
                        groups[tuple(_choose_answer(present, values))].append(i)
            else:
                for i in self._candidates(t):
                    answer = answer_for(t, [self.attributes[int(i)]], values, lead)
                    if answer is not None:
                        groups[tuple(answer)].append(int(i))
            self._groups[key] = {a: np.asarray(ids, dtype=np.int32) for a, ids in groups.items()}
        return self._groups[key]

    def _draw_grouped(self, t: Template, rng: np.random.Generator, tries: int, quota: int
                      ) -> tuple[list[int], list[str], str | None] | None:
        """ECG-QA's own draw for a choose or query question: the question first (its values and lead uniform),
        then one of its answers, then a record of that answer (`_record_of_an_answer`). A question needs two answers
        other than "none" among the pool's records, as in ECG-QA's train split. So "none" is one answer among the
        others, as in the official files, not the answer of most records."""
        for _ in range(tries):
            lead = _pick(rng, STANDARD_12) if "${lead}" in t.pattern else None
            values: list[str] = []
            if t.kind == "choose":
                first = _pick(rng, t.values)
                values = [first, _pick(rng, [v for v in t.values if v != first])]
            elif t.placeholders:
                values = [_pick(rng, t.values)]
            groups = self._answer_groups(t, values, lead)
            if sum(answer != (NONE,) for answer in groups) < 2:
                continue
            return [self._record_of_an_answer(groups, rng, quota)], values, lead
        return None

    @staticmethod
    def _record_of_an_answer(groups: dict[tuple[str, ...], np.ndarray], rng: np.random.Generator, quota: int,
                             other_than: tuple[str, ...] | None = None) -> int:
        """A record of one of the answers in ``groups``, ``other_than`` one answer (a counterfactual pair's partner).
        An answer is drawn with weight min(its records, ``quota``: the split's `ANSWER_QUOTA` of the template's
        kind), after ECG-QA's per-answer quotas: a common answer as often as any other, an answer only one record
        gives once for every quota's worth of the others."""
        answers = sorted(a for a in groups if a != other_than)
        weights = np.array([min(len(groups[a]), quota) for a in answers], dtype=float)
        members = groups[answers[int(rng.choice(len(answers), p=weights / weights.sum()))]]
        return int(members[int(rng.integers(len(members)))])

    def _draw(self, t: Template, rng: np.random.Generator) -> tuple[list[int], list[str], str | None] | None:
        """One random (ECGs, values, lead) for template ``t``; None when nothing in the pool fits."""
        lead = _pick(rng, STANDARD_12) if "${lead}" in t.pattern else None
        if t.question_type.startswith("comparison"):
            picked = self._comparison(t, rng)
            return None if picked is None else (picked[0], picked[1], lead)
        candidates = self._candidates(t)
        if self._intervention and self.strata:  # stratum first, drawn from P(s), then a record of that stratum
            names = list(self._stratum_prior)
            wanted = names[int(rng.choice(len(names), p=list(self._stratum_prior.values())))]
            in_stratum = candidates[np.array([self.strata.get(int(i)) == wanted for i in candidates], dtype=bool)] \
                if candidates.size else candidates
            candidates = in_stratum if in_stratum.size else candidates
        if candidates.size == 0:
            return None
        ecg_id = int(candidates[int(rng.integers(candidates.size))])
        return [ecg_id], self._pick_values(t, self.attributes[ecg_id], rng, lead), lead

    def generate(self, n: int, seed: int = 0, template_ids: list[int] | None = None, start_id: int = 0,
                 yes_rate: float | None = 1 / 3, tries: int = 30, intervention: bool = False,
                 paraphrase: float = 0.0, paired: bool = False,
                 include_held_out_wordings: bool = False, answer_groups: bool = False,
                 quota_split: str = "train", answered_comparisons: bool = False) -> list[dict]:
        """``n`` samples in the official schema, templates drawn uniformly (or from ``template_ids``).

        Yes/no questions aim at ``yes_rate`` "yes" answers (the official release has about 1:2): the
        wanted answer is drawn first, then up to ``tries`` draws look for ECGs and values that give it —
        which makes the question depend on the record, as in the official data.

        ``paraphrase``: share of questions worded by one of the template's official paraphrases (train
        wordings, `Template.paraphrases`) instead of the template wording; templates without paraphrases
        keep their template wording. 0 (default) gives template wording only, 1 paraphrases wherever known.
        The held-out paraphrases (`Template.held_out_paraphrases`) are left out, as data to train on needs;
        ``include_held_out_wordings=True`` uses every wording (questions to evaluate on).

        ``intervention=True`` samples do(Q) instead (de-biased pre-training data): the severity stratum is
        drawn from P(s) (needs ``strata``), a record of that stratum, and the question's values independently
        of the record; no answer is aimed at. The answer is still computed from the record's labels.

        ``paired=True`` asks every question twice, in the same words, of two ECGs whose answers differ
        (counterfactual pairs): for each wording, half the answers are one and half the other, so P(A | Q) carries
        nothing and the loss can only fall by reading the ECG. A question for which no ECG of the pool gives
        another answer is dropped; ``n`` counts samples, so ``n // 2`` pairs.

        ``answer_groups=True`` draws single-ECG choose and query questions as ECG-QA drew them (`_draw_grouped`):
        the question first, then up to a fixed number of records of each of its answers. With the default
        record-first draw most of them answer "none" (about three in four generated choose questions, against
        about one in three in the official samples), and a model learns that "none" is the safe answer.
        ``quota_split`` names the split whose per-answer quotas weigh the answers (`ANSWER_QUOTA`): the split the
        pool belongs to, as ECG-QA drew each split with its own.

        ``answered_comparisons=True`` asks the numeric comparison queries (`ANSWERED_COMPARISONS`: "What numeric
        features of the second ECG ... as compared to the first ECG?") only of pairs whose answer names something,
        as ECG-QA's own questions almost always do (about 3 % "none" in its train questions of those templates).
        Drawn pair first, about a third of them answer "none" (and a pair whose lead II PTB-XL marks as noisy
        always does, whatever the ECGs measure). Other comparison queries keep the pair-first draw: ECG-QA's valid
        questions of template 47, for one, answer "none" about half the time.
        """
        if quota_split not in ANSWER_QUOTA:
            raise ValueError(f"quota_split must be one of {sorted(ANSWER_QUOTA)} (got {quota_split!r})")
        if intervention and paired:  # a partner is chosen for its other answer: the question-record link is back
            raise IncompatibleDrawError("intervention and paired sampling cannot be combined: a pair's second ECG "
                                        "is chosen for its answer, so the question depends on the record again")
        if intervention and answer_groups:  # the record is drawn for its answer: S -> Q again
            raise IncompatibleDrawError("intervention and answer-group sampling cannot be combined: a record is "
                                        "drawn for its answer to the question, so the question depends on the "
                                        "record again")
        if intervention and not self.strata:
            raise ValueError("intervention sampling needs the records' severity strata (ECGQAGenerator(strata=...))")
        if not 0.0 <= paraphrase <= 1.0:
            raise ValueError(f"paraphrase is a share of questions, between 0 and 1 (got {paraphrase})")
        self._intervention = intervention
        quotas = ANSWER_QUOTA[quota_split]
        if intervention:
            from ecgllm.datasets.severity import stratum_weights

            self._stratum_prior = stratum_weights([self.strata[i] for i in self.pools.ids if i in self.strata])
            yes_rate = None
        # how the samples were drawn, written into each one: `debias: intervention` trains only on do(Q) samples
        sampling = "intervention" if intervention else "paired" if paired else "observational"  # see above
        rng = np.random.default_rng(seed)
        # a separate stream for wording, so that paraphrase=0 and paraphrase>0 draw the same records and answers
        wording_rng = np.random.default_rng([seed, 1])
        tids = sorted(template_ids or self.templates)
        question_ids: dict[tuple[int, str], int] = {}
        out: list[dict] = []
        attempts = 0
        while len(out) < n and attempts < 20 * n + 100:
            attempts += 1
            t = self.templates[tids[int(rng.integers(len(tids)))]]
            wanted = None
            if t.kind == "verify" and yes_rate is not None:
                wanted = "yes" if rng.random() < yes_rate else "no"
            grouped = answer_groups and self.groups_apply(t)
            named = answered_comparisons and t.template_id in ANSWERED_COMPARISONS
            found = None
            for _ in range(tries if wanted or named else 1):
                drawn = self._draw_grouped(t, rng, tries, quotas[t.kind]) if grouped else self._draw(t, rng)
                if drawn is None:
                    break
                ecg_ids, values, lead = drawn
                answer = answer_for(t, [self.attributes[i] for i in ecg_ids], values, lead)
                if answer is not None and not (named and answer == [NONE]):
                    found = (ecg_ids, values, lead, answer)
                    if wanted is None or answer[0] == wanted:
                        break
            if found is None:
                continue
            ecg_ids, values, lead, answer = found
            asked = [(ecg_ids, answer)]
            if paired and grouped:  # the partner: a record of another answer
                other = self._record_of_an_answer(self._answer_groups(t, values, lead), rng, quotas[t.kind],
                                                  tuple(answer))
                asked.append(([other], answer_for(t, [self.attributes[other]], values, lead)))
            elif paired:
                partner = self._partner(t, values, lead, answer, rng, tries, named)
                if partner is None:
                    continue
                asked.append(partner)
            wording = t.pattern
            wordings = t.paraphrases if include_held_out_wordings else t.trained_paraphrases
            if wordings and paraphrase > 0 and wording_rng.random() < paraphrase:
                wording = _pick(wording_rng, wordings)
            question = fill_named(wording, dict(zip(t.placeholders, values)), lead)
            qid = question_ids.setdefault((t.template_id, question), len(question_ids))
            for ecg_ids, answer in asked:
                out.append({
                    "template_id": t.template_id, "question_id": qid, "sample_id": start_id + len(out),
                    "question_type": t.question_type, "attribute_type": t.attribute_type, "question": question,
                    "answer": answer, "ecg_id": ecg_ids, "attribute": _attribute_field(t, values),
                    "generator_version": GENERATOR_VERSION, "sampling": sampling,
                    "draw": "answer_groups" if grouped else "record_first",
                    **({"answer_quota": quotas[t.kind]} if grouped else {}),
                })
        return out[: n - n % 2] if paired else out[:n]  # pairs stay whole

    def _partner(self, t: Template, values: list[str], lead: str | None, answer: list[str],
                 rng: np.random.Generator, tries: int, named: bool = False) -> tuple[list[int], list[str]] | None:
        """ECGs of the pool that answer the same question (``values``, ``lead``) otherwise than ``answer`` (and,
        ``named``, not "none")."""
        for _ in range(tries):
            if t.question_type.startswith("comparison"):
                picked = self._comparison(t, rng)
                if picked is None:  # one failed draw of a pair; another may succeed
                    continue
                ecg_ids = picked[0]
            else:
                candidates = self._candidates(t)
                if not candidates.size:
                    return None
                ecg_ids = [int(candidates[int(rng.integers(candidates.size))])]
            other = answer_for(t, [self.attributes[i] for i in ecg_ids], values, lead)
            if other is not None and sorted(other) != sorted(answer) and not (named and other == [NONE]):
                return ecg_ids, other
        return None
