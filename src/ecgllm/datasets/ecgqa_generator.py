"""Generate ECG-QA-style samples (official JSON schema) for any labelled collection, and re-derive the
answer of an official sample from our labels (used to check the generator against the official data).

Every template's answer comes from `answer_for`; generation only chooses records, values and leads. So
what we generate and what we check against the official release are computed by the same code.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ecgllm.datasets.ecgqa_attributes import NORMAL_RANGES, RANGE_NAMES, RecordAttributes
from ecgllm.datasets.ecgqa_templates import Template, load_templates
from ecgllm.io.leads import STANDARD_12

WITHIN = "within the normal range"
FEATURES = tuple(NORMAL_RANGES)
_LEAD_IN_QUESTION = re.compile(r"\blead (I{1,3}|aV[RLF]|V[1-6])\b")


def _pick(rng: np.random.Generator, seq):
    """One element of a sequence (rng.choice converts lists to arrays on every call: 20x slower)."""
    return seq[int(rng.integers(len(seq)))]


def _present(t: Template, a: RecordAttributes, lead: str | None = None,
             value: str | None = None) -> set[str] | None:
    """Values of the template's scope that record ``a`` shows; None when its labels do not cover it."""
    s = t.scope
    allowed = t.value_set
    if s in ("diagnostic_incl", "form", "rhythm", "statement"):
        return {v for v in a.statements if v in allowed} if s != "statement" else set(a.statements)
    if s == "diagnostic_excl":
        relevant = {v: p for v, p in a.statements.items() if v in allowed}
        if any(np.isnan(p) for p in relevant.values()):
            return None
        return {v for v, p in relevant.items() if p >= 100}
    if s == "rhythm_not_sr":
        return {v for v in a.statements if v in allowed and v != "sinus rhythm"}
    if s == "superclass":
        return set(a.superclasses)
    if s == "normal":
        return {"normal"} if a.normal else set()
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
        return {f"lead {x}" for x in a.noise.get(value or "", frozenset())}
    if s == "numeric_range":
        return None if value not in a.numeric else {a.numeric[value]}
    if s == "numeric_in_range":
        if len(a.numeric) < len(FEATURES):
            return None
        return {f for f, r in a.numeric.items() if r == value}
    return None


def _none_answer(t: Template) -> str:
    return "none of myocardial infarction" if "none of myocardial infarction" in t.answer_classes else "none"


def answer_for(t: Template, records: list[RecordAttributes], values: list[str] | None = None,
               lead: str | None = None) -> list[str] | None:
    """The answer of template ``t`` about ``records`` (one, or two for comparisons) and the values the
    question names; None when our labels cannot answer it."""
    values = values or []
    if t.question_type.startswith("comparison"):
        return _compare(t, records[0], records[1], values)
    a = records[0]
    # Some scopes are narrowed by the first named value (the noise whose leads are asked, the feature whose
    # range is asked, the range whose features are asked); the rest are the options the question offers.
    narrowing = t.scope in ("noise_leads", "numeric_range", "numeric_in_range")
    present = _present(t, a, lead=lead, value=values[0] if narrowing and values else None)
    if present is None:
        return None
    options = values[1:] if t.scope == "numeric_range" else values
    if t.op == "verify3":
        if values[0] not in present:
            return ["no"]
        p = a.statements[values[0]]
        return None if np.isnan(p) else ["yes" if p >= 100 else "not sure"]
    if t.op == "verify":
        if t.scope == "normal":
            return ["yes" if present else "no"]
        return ["yes" if options and options[0] in present else "no"]
    if t.op == "verify_any":
        return ["yes" if present else "no"]
    if t.op == "choose":
        chosen = [v for v in options[:2] if v in present]
        return chosen or [_none_answer(t)]
    if t.op == "query":
        if narrowing:
            return sorted(present) or ["none"]
        return sorted(present & t.value_set) or [_none_answer(t)]
    return None


def _compare(t: Template, a: RecordAttributes, b: RecordAttributes, values: list[str]) -> list[str] | None:
    if t.scope == "numeric":
        if len(a.numeric) < len(FEATURES) or len(b.numeric) < len(FEATURES):
            return None
        features = [values[0]] if t.kind == "verify" else list(FEATURES)
        hits = []
        for f in features:
            na, nb = a.numeric[f] == WITHIN, b.numeric[f] == WITHIN
            if {"become_normal": not na and nb, "become_abnormal": na and not nb,
                    "still_abnormal": not na and not nb, "still_normal": na and nb}[t.op]:
                hits.append(f)
        if t.kind == "verify":
            return ["yes" if hits else "no"]
        return sorted(hits) or ["none"]
    allowed = t.value_set
    sa = {v for v in a.statements if v in allowed}
    sb = {v for v in b.statements if v in allowed}
    result = {"resolved": sa - sb, "new": sb - sa, "remain": sa & sb,
              "absent": allowed - sa - sb}[t.op]
    if t.kind == "verify":
        return ["yes" if values[0] in result else "no"]
    return sorted(result) or ["none"]


def fill(pattern: str, values: list[str], lead: str | None) -> str:
    """Put the chosen values into a template pattern (``${lead}`` reads "lead aVL")."""
    text = pattern
    if lead is not None:
        text = text.replace("${lead}", f"lead {lead}")
    names = re.findall(r"\$\{(\w+?)\}", text)
    for i, name in enumerate(names):
        text = text.replace("${" + name + "}", values[i] if i < len(values) else "", 1)
    return text


def _names_a_value(t: Template) -> bool:
    """Does the question name an attribute value (any placeholder other than the lead)?"""
    return "${" in t.pattern.replace("${lead}", "")


def _regenerate_inputs(t: Template, sample) -> tuple[list[str], str | None]:
    """Values and lead named by an official sample (its ``attribute`` field and question text)."""
    lead_match = _LEAD_IN_QUESTION.search(sample.question)
    lead = lead_match.group(1) if lead_match and "${lead}" in t.pattern else None
    values = list(sample.attribute or [])
    if not values and t.kind == "verify" and _names_a_value(t):
        # Comparison samples carry no attribute field: the named value is only in the question text.
        vocabulary = FEATURES if t.scope == "numeric" else t.values
        named = [v for v in vocabulary if v in sample.question]
        values = [max(named, key=len)] if named else []
    return values, lead


def regenerate_answer(sample, attributes: dict[int, RecordAttributes]) -> list[str] | None:
    """Our answer for an official sample (same template, ECGs and attributes); None if not covered."""
    t = load_templates().get(sample.template_id)
    if t is None or not t.supported or any(e not in attributes for e in sample.ecg_id):
        return None
    values, lead = _regenerate_inputs(t, sample)
    if (t.scope == "noise_lead" and lead is None) or (t.kind == "verify" and _names_a_value(t) and not values):
        return None
    narrowed = t.scope in ("noise_leads", "numeric_range", "numeric_in_range")
    if t.op == "verify_any" or (t.kind == "query" and not narrowed):
        values = []  # the question names no value; the official attribute field lists answers instead
    return answer_for(t, [attributes[e] for e in sample.ecg_id], values, lead)


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
            consecutive += [(x.ecg_id, y.ecg_id) for x, y in zip(records, records[1:])]
        patients = {i: attributes[i].patient_id for i in ids if attributes[i].patient_id is not None}
        self.pools = GeneratorPools(ids=ids, consecutive=consecutive, patients=patients,
                                    with_patient=sorted(patients))
        self._covered: dict[int, np.ndarray] = {}

    def _candidates(self, t: Template) -> np.ndarray:
        if t.template_id not in self._covered:
            ids = []
            for i in self.pools.ids:
                a = self.attributes[i]
                if t.scope == "numeric_range":
                    ok = bool(a.numeric)
                elif t.scope == "numeric_in_range":
                    ok = len(a.numeric) == len(FEATURES)
                elif t.scope == "noise_leads":
                    ok = a.noise is not None
                else:
                    ok = _present(t, a, lead="II") is not None
                if ok:
                    ids.append(i)
            self._covered[t.template_id] = np.asarray(ids, dtype=np.int64)
        return self._covered[t.template_id]

    def _pick_values(self, t: Template, a: RecordAttributes, rng: np.random.Generator,
                     lead: str | None) -> list[str]:
        if t.scope == "numeric_range":
            feature = _pick(rng, sorted(a.numeric))
            if t.kind == "verify":
                if self._intervention:  # the asked range must not depend on the record
                    return [feature, _pick(rng, RANGE_NAMES)]
                return [feature, a.numeric[feature] if rng.random() < 1 / 3 else _pick(rng, RANGE_NAMES)]
            if t.kind == "choose":
                first = _pick(rng, RANGE_NAMES)
                return [feature, first, _pick(rng, [r for r in RANGE_NAMES if r != first])]
            return [feature]
        if t.scope == "numeric_in_range":
            return [_pick(rng, RANGE_NAMES)]
        if t.kind == "query" and t.scope != "noise_leads" or t.op == "verify_any" or t.scope == "normal":
            return []
        options = list(t.values)
        present = sorted(_present(t, a, lead=lead) or set()) if t.scope != "noise_leads" else sorted(a.noise or {})
        if t.scope == "noise_leads":
            options = sorted({"baseline drift", "static noise", "burst noise", "electrodes problems"})
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
        if t.scope == "numeric":
            return list(pair), [_pick(rng, FEATURES)]
        a, b = (self.attributes[i] for i in pair)
        pool = sorted((a.statements.keys() | b.statements.keys()) & t.value_set)
        value = _pick(rng, pool) if pool and not self._intervention and rng.random() < 0.5 else _pick(rng, t.values)
        return list(pair), [value]

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
                 yes_rate: float | None = 1 / 3, tries: int = 30, intervention: bool = False) -> list[dict]:
        """``n`` samples in the official schema, templates drawn uniformly (or from ``template_ids``).

        Yes/no questions aim at ``yes_rate`` "yes" answers (the official release has about 1:2): the
        wanted answer is drawn first, then up to ``tries`` draws look for ECGs and values that give it —
        which makes the question depend on the record, as in the official data.

        ``intervention=True`` samples do(Q) instead (de-biased pre-training data): the severity stratum is
        drawn from P(s) (needs ``strata``), a record of that stratum, and the question's values independently
        of the record; no answer is aimed at. The answer is still computed from the record's labels.
        """
        if intervention and not self.strata:
            raise ValueError("intervention sampling needs the records' severity strata (ECGQAGenerator(strata=...))")
        self._intervention = intervention
        if intervention:
            from ecgllm.datasets.severity import stratum_weights

            self._stratum_prior = stratum_weights([self.strata[i] for i in self.pools.ids if i in self.strata])
            yes_rate = None
        rng = np.random.default_rng(seed)
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
            found = None
            for _ in range(tries if wanted else 1):
                drawn = self._draw(t, rng)
                if drawn is None:
                    break
                ecg_ids, values, lead = drawn
                answer = answer_for(t, [self.attributes[i] for i in ecg_ids], values, lead)
                if answer is not None:
                    found = (ecg_ids, values, lead, answer)
                    if wanted is None or answer[0] == wanted:
                        break
            if found is None:
                continue
            ecg_ids, values, lead, answer = found
            question = fill(t.pattern, values, lead)
            qid = question_ids.setdefault((t.template_id, question), len(question_ids))
            out.append({
                "template_id": t.template_id, "question_id": qid, "sample_id": start_id + len(out),
                "question_type": t.question_type, "attribute_type": t.attribute_type, "question": question,
                "answer": answer, "ecg_id": ecg_ids,
                "attribute": None if t.question_type.startswith("comparison") else (values or None),
            })
        return out
