"""The 70 ECG-QA (PTB-XL) templates: official wording, answer classes, rules and paraphrased wordings.

* `PATTERNS` holds each template's official question wording, with ``${...}`` placeholders. 69 of them are
  read off the official template-version samples (every official question is matched by its pattern; see
  tests/test_ecgqa_agreement.py); template 10 has no official sample here and follows ECG-QA's generator.
* ``data/ecgqa_templates.json`` holds the official answer classes (``answers_for_each_template.csv``) and
  which templates the official train samples show.
* ``data/ecgqa_paraphrases.json`` holds, per template, the paraphrased wordings of the official
  **train** samples (template and paraphrased versions share ECGs, values and answers, so each paraphrase is
  turned back into a pattern). Valid samples are never read, so a model trained on these wordings can be
  tested on the official valid/test paraphrases.

Both files are built by ``python -m ecgllm.datasets.ecgqa_templates --build ../shared/data/ecgqa``.

Each template gets a *rule*: the attribute universe it reads ("scope") and what it asks ("op").
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ecgllm.errors import InputError

DATA = Path(__file__).resolve().parents[1] / "data"
TEMPLATES_JSON = DATA / "ecgqa_templates.json"
PARAPHRASES_JSON = DATA / "ecgqa_paraphrases.json"

_CMP_PREV = "Compared to the previous tracing, "
_CMP_FIRST = "Compared to the first ECG, "
# template_id -> (question_type, attribute_type, official template wording)
PATTERNS: dict[int, tuple[str, str, str]] = {
    1: ("single-verify", "scp_code", "Does this ECG show symptoms of ${scp_code}?"),
    2: ("single-verify", "scp_code", "Is this a normal ECG?"),
    3: ("single-choose", "scp_code", "Which symptom does this ECG show, ${scp_code1} or ${scp_code2}?"),
    4: ("single-choose", "scp_code",
        "Which diagnostic symptom does this ECG show, ${scp_code1} or ${scp_code2}, including uncertain symptoms?"),
    5: ("single-choose", "scp_code",
        "Which diagnostic symptom does this ECG show, ${scp_code1} or ${scp_code2}, excluding uncertain symptoms?"),
    6: ("single-choose", "scp_code", "Which form-related symptom does this ECG show, ${scp_code1} or ${scp_code2}?"),
    7: ("single-choose", "scp_code", "Which rhythm-related symptom does this ECG show, ${scp_code1} or ${scp_code2}?"),
    8: ("single-query", "scp_code", "What diagnostic symptoms does this ECG show, including uncertain symptoms?"),
    9: ("single-query", "scp_code", "What diagnostic symptoms does this ECG show, excluding uncertain symptoms?"),
    10: ("single-query", "scp_code", "What rhythm-related symptoms does this ECG show?"),
    11: ("single-query", "scp_code", "What form-related symptoms does this ECG show?"),
    12: ("single-verify", "scp_code", "Does this ECG show any kind of abnormal symptoms?"),
    13: ("single-verify", "scp_code", "Does this ECG show any diagnostic symptoms, including uncertain symptoms?"),
    14: ("single-verify", "scp_code", "Does this ECG show any diagnostic symptoms, excluding uncertain symptoms?"),
    15: ("single-verify", "scp_code", "Does this ECG show any form-related symptoms?"),
    16: ("single-verify", "scp_code", "Does this ECG show any rhythm-related symptoms?"),
    17: ("single-verify", "scp_code", "Does this ECG show symptoms of ${scp_code} in ${lead}?"),
    18: ("single-query", "scp_code", "What form-related symptoms does this ECG show in ${lead}?"),
    19: ("single-query", "scp_code", "What leads are showing symptoms of ${scp_code} in this ECG?"),
    20: ("single-verify", "heart_axis", "Does this ECG show ${heart_axis}?"),
    21: ("single-choose", "heart_axis", "Which cardiac axis does this ECG show, ${heart_axis1} or ${heart_axis2}?"),
    22: ("single-query", "heart_axis", "What direction is this ECG deviated to?"),
    23: ("single-verify", "stage_of_infarction", "Does this ECG show ${stage_of_infarction}?"),
    24: ("single-choose", "stage_of_infarction",
         "Which stage of infarction is this ECG at, ${stage_of_infarction1} or ${stage_of_infarction2}?"),
    25: ("single-query", "stage_of_infarction", "What stage of infarction is this ECG at?"),
    26: ("single-verify", "noise", "Does this ECG show ${noise} in ${lead}?"),
    27: ("single-verify", "noise", "Does this ECG show ${noise}?"),
    28: ("single-verify", "noise", "Does this ECG show any kind of noises in ${lead}?"),
    29: ("single-verify", "noise", "Does this ECG show any kind of noises?"),
    30: ("single-choose", "noise", "Which noise does this ECG show, ${noise1} or ${noise2}?"),
    31: ("single-choose", "noise", "Which noise does this ECG show in ${lead}, ${noise1} or ${noise2}?"),
    32: ("single-query", "noise", "What kind of noises does this ECG show?"),
    33: ("single-query", "noise", "What kind of noises does this ECG show in ${lead}?"),
    34: ("single-query", "noise", "What leads are showing ${noise} in this ECG?"),
    35: ("single-verify", "extra_systole", "Does this ECG show any kind of extra systoles?"),
    36: ("single-verify", "extra_systole", "Does this ECG show ${extra_systole}?"),
    37: ("single-choose", "extra_systole",
         "Which kind of extra systoles does this ECG show, ${extra_systole1} or ${extra_systole2}?"),
    38: ("single-query", "extra_systole", "What kind of extra systole does this ECG show?"),
    39: ("single-verify", "numeric_feature", "Does the ${numeric_feature} of this ECG fall ${range}?"),
    40: ("single-choose", "numeric_feature",
         "Which range does the ${numeric_feature} of this ECG fall in, ${range1} or ${range2}?"),
    41: ("single-query", "numeric_feature", "What range does the ${numeric_feature} of this ECG fall in?"),
    42: ("single-query", "numeric_feature", "What numeric features of this ECG fall ${range}?"),
    43: ("comparison_consecutive-verify", "scp_code",
         _CMP_PREV + "has ${scp_code} been resolved in the recent tracing?"),
    44: ("comparison_consecutive-verify", "scp_code",
         _CMP_PREV + "has ${scp_code} been newly detected in the recent tracing?"),
    45: ("comparison_consecutive-verify", "scp_code",
         _CMP_PREV + "does ${scp_code} still remain in the recent tracing?"),
    46: ("comparison_consecutive-verify", "scp_code",
         _CMP_PREV + "is ${scp_code} still not found in the recent tracing?"),
    47: ("comparison_consecutive-query", "scp_code",
         "What symptoms have been resolved in the recent tracing as compared to the previous one?"),
    48: ("comparison_consecutive-query", "scp_code",
         "What symptoms are newly detected in the recent tracing as compared to the previous one?"),
    49: ("comparison_consecutive-query", "scp_code",
         "What symptoms still remain in the recent tracing as compared to the previous one?"),
    50: ("comparison_consecutive-verify", "numeric_feature",
         _CMP_PREV + "has the ${numeric_feature} of the recent tracing become normal?"),
    51: ("comparison_consecutive-verify", "numeric_feature",
         _CMP_PREV + "has the ${numeric_feature} of the recent tracing changed to an abnormal value?"),
    52: ("comparison_consecutive-verify", "numeric_feature",
         _CMP_PREV + "does the ${numeric_feature} still show an abnormal value in the recent tracing?"),
    53: ("comparison_consecutive-verify", "numeric_feature",
         _CMP_PREV + "is the ${numeric_feature} still considered normal in the recent tracing?"),
    54: ("comparison_consecutive-query", "numeric_feature",
         "What numeric features of the recent tracing now have become normal compared to the previous one?"),
    55: ("comparison_consecutive-query", "numeric_feature",
         "What numeric features of the recent tracing are now considered abnormal values compared to the "
         "previous one?"),
    56: ("comparison_consecutive-query", "numeric_feature",
         "What numeric features of the recent tracing are still abnormal compared to the previous one?"),
    57: ("comparison_irrelevant-verify", "scp_code", _CMP_FIRST + "has ${scp_code} been resolved in the second ECG?"),
    58: ("comparison_irrelevant-verify", "scp_code",
         _CMP_FIRST + "has ${scp_code} been newly detected in the second ECG?"),
    59: ("comparison_irrelevant-verify", "scp_code", _CMP_FIRST + "does ${scp_code} still remain in the second ECG?"),
    60: ("comparison_irrelevant-verify", "scp_code", _CMP_FIRST + "is ${scp_code} still not found in the second ECG?"),
    61: ("comparison_irrelevant-query", "scp_code",
         "What symptoms have been resolved in the second ECG as compared to the first ECG?"),
    62: ("comparison_irrelevant-query", "scp_code",
         "What symptoms are newly detected in the second ECG as compared to the first ECG?"),
    63: ("comparison_irrelevant-query", "scp_code",
         "What symptoms still remain in the second ECG as compared to the first ECG?"),
    64: ("comparison_irrelevant-verify", "numeric_feature",
         _CMP_FIRST + "has the ${numeric_feature} of the second ECG become normal?"),
    65: ("comparison_irrelevant-verify", "numeric_feature",
         _CMP_FIRST + "has the ${numeric_feature} of the second ECG changed to an abnormal value?"),
    66: ("comparison_irrelevant-verify", "numeric_feature",
         _CMP_FIRST + "does the ${numeric_feature} still show an abnormal value in the second ECG?"),
    67: ("comparison_irrelevant-verify", "numeric_feature",
         _CMP_FIRST + "is the ${numeric_feature} still normal in the second ECG?"),
    68: ("comparison_irrelevant-query", "numeric_feature",
         "What numeric features of the second ECG now have become normal as compared to the first ECG?"),
    69: ("comparison_irrelevant-query", "numeric_feature",
         "What numeric features of the second ECG are now considered abnormal values as compared to the first ECG?"),
    70: ("comparison_irrelevant-query", "numeric_feature",
         "What numeric features of the second ECG are still abnormal as compared to the first ECG?"),
}

# template_id -> (scope, op). A scope names the attribute universe a template reads, an op what it asks.
RULES: dict[int, tuple[str, str]] = {
    1: ("statement_or_superclass", "verify3"), 2: ("normal", "verify"), 3: ("superclass", "choose"),
    4: ("diagnostic_incl", "choose"), 5: ("diagnostic_excl", "choose"), 6: ("form", "choose"),
    7: ("rhythm", "choose"), 8: ("diagnostic_incl", "query"), 9: ("diagnostic_excl", "query"),
    10: ("rhythm", "query"), 11: ("form", "query"), 12: ("abnormal", "verify_any"),
    13: ("diagnostic_incl", "verify_any"), 14: ("diagnostic_excl", "verify_any"), 15: ("form", "verify_any"),
    16: ("rhythm", "verify_any"), 17: ("form_lead", "verify"), 18: ("form_lead", "query"),
    19: ("form_leads", "query"),
    20: ("heart_axis", "verify"), 21: ("heart_axis", "choose"), 22: ("heart_axis", "query"),
    23: ("stage", "verify"), 24: ("stage", "choose"), 25: ("stage", "query"),
    26: ("noise_lead", "verify"), 27: ("noise", "verify"), 28: ("noise_lead", "verify_any"),
    29: ("noise", "verify_any"), 30: ("noise", "choose"), 31: ("noise_lead", "choose"), 32: ("noise", "query"),
    33: ("noise_lead", "query"), 34: ("noise_leads", "query"),
    35: ("extra_systole", "verify_any"), 36: ("extra_systole", "verify"), 37: ("extra_systole", "choose"),
    38: ("extra_systole", "query"),
    39: ("numeric_range", "verify"), 40: ("numeric_range", "choose"), 41: ("numeric_range", "query"),
    42: ("numeric_in_range", "query"),
    **{tid: ("statement", op) for tids, op in (((43, 47, 57, 61), "resolved"), ((44, 48, 58, 62), "new"),
                                               ((45, 49, 59, 63), "remain"), ((46, 60), "absent"))
       for tid in tids},
    **{tid: ("numeric", op) for tids, op in (((50, 54, 64, 68), "become_normal"),
                                             ((51, 55, 65, 69), "become_abnormal"),
                                             ((52, 56, 66, 70), "still_abnormal"), ((53, 67), "still_normal"))
       for tid in tids},
}
NONE_ANSWERS = ("none", "none of myocardial infarction")


def _universe(scope: str, tid: int) -> tuple[str, ...]:
    """The attribute values a template can name or answer with (never the "none" answer)."""
    from ecgllm.datasets import ecgqa_attributes as A

    names = lambda codes: tuple(A.SCP_NAMES[c] for c in codes)  # noqa: E731
    if scope in ("diagnostic_incl", "diagnostic_excl"):
        return names(A.DIAGNOSTIC_CODES)
    if scope == "form":
        return names(A.FORM_CODES)
    if scope == "rhythm":
        return names(A.RHYTHM_CODES)
    if scope in ("form_lead", "form_leads"):
        return names(A.FORM_LEAD_CODES)
    if scope == "statement":
        return names(A.ALL_CODES)
    if scope == "statement_or_superclass":
        return names(A.ALL_CODES) + tuple(A.SUPERCLASS_NAMES.values())
    if scope == "superclass":
        return tuple(A.SUPERCLASS_NAMES.values())
    if scope == "heart_axis":
        return A.HEART_AXIS_CLASSES
    if scope == "stage":  # verify and choose name the three stages; the query answers any of the five flags
        return A.STAGE_NAMES if tid == 25 else tuple(A.STAGES.values())
    if scope.startswith("noise"):
        return A.NOISE_NAMES
    if scope == "extra_systole":
        return tuple(A.EXTRA_SYSTOLE_TYPES.values())
    if scope.startswith("numeric"):
        return A.FEATURES
    return ()


@dataclass(frozen=True)
class Template:
    template_id: int
    question_type: str
    attribute_type: str
    pattern: str
    answer_classes: tuple[str, ...]
    scope: str
    op: str
    completed: bool                      # True: no official sample shows this wording
    vocabulary: tuple[str, ...] = ()
    paraphrases: tuple[str, ...] = ()    # official paraphrased wordings (train), same placeholders

    @property
    def held_out_paraphrases(self) -> tuple[str, ...]:
        """The paraphrased wordings no training data may use (`held_out_wordings`); never the template wording,
        which some templates' paraphrased samples reuse."""
        return held_out_wordings(tuple(w for w in self.paraphrases if w != self.pattern))

    @property
    def trained_paraphrases(self) -> tuple[str, ...]:
        """The paraphrased wordings training data may use: all but the held-out one."""
        held = self.held_out_paraphrases
        return tuple(w for w in self.paraphrases if w not in held)

    @property
    def supported(self) -> bool:
        return self.op != "unsupported"

    @property
    def kind(self) -> str:
        """verify / choose / query (the part after the dash of the question type)."""
        return self.question_type.rsplit("-", 1)[1]

    @property
    def value_set(self) -> frozenset[str]:
        return _value_set(self.vocabulary)

    @property
    def values(self) -> tuple[str, ...]:
        """Attribute values the template can mention or answer with (never the "none" answer)."""
        return self.vocabulary

    @property
    def placeholders(self) -> list[str]:
        """The pattern's value placeholders in order (``${lead}`` excluded)."""
        return [p for p in re.findall(r"\$\{(\w+?)\}", self.pattern) if p != "lead"]


@lru_cache(maxsize=256)
def _value_set(vocabulary: tuple[str, ...]) -> frozenset[str]:
    return frozenset(vocabulary)


@lru_cache(maxsize=1)
def load_templates() -> dict[int, Template]:
    """All 70 templates with their rules, official answer classes and paraphrased wordings."""
    data = {int(item["template_id"]): item for item in json.loads(TEMPLATES_JSON.read_text())}
    paraphrases = json.loads(PARAPHRASES_JSON.read_text())["templates"] if PARAPHRASES_JSON.exists() else {}
    out: dict[int, Template] = {}
    for tid, (qtype, atype, pattern) in PATTERNS.items():
        scope, op = RULES[tid]
        item = data.get(tid, {})
        out[tid] = Template(tid, qtype, atype, pattern, tuple(item.get("answer_classes", ())), scope, op,
                            completed=not item.get("observed", False), vocabulary=_universe(scope, tid),
                            paraphrases=tuple(paraphrases.get(str(tid), ())))
    return out


# Per template, one official paraphrased wording is never trained on (generated data and converted official samples
# of a train split leave it out): ECG-QA's valid and test questions reuse the train wordings, so without a held-out
# wording no question would show how the model answers a wording it never saw. The one held out is the wording with
# the smallest SHA-256 of its text, in templates with at least `MIN_WORDINGS_TO_HOLD_OUT` paraphrases.
MIN_WORDINGS_TO_HOLD_OUT = 3


class HeldOutWordingError(InputError):
    """Data to train on holds a question in a held-out (or unknown) paraphrased wording."""


@lru_cache(maxsize=256)
def held_out_wordings(paraphrases: tuple[str, ...]) -> tuple[str, ...]:
    """The held-out wording of a template's paraphrases (with ``${...}`` placeholders), or none."""
    if len(paraphrases) < MIN_WORDINGS_TO_HOLD_OUT:
        return ()
    return (min(paraphrases, key=lambda w: hashlib.sha256(w.encode()).hexdigest()),)


def wording_of(template: Template, question: str) -> str | None:
    """The wording (template pattern or official paraphrase) a question is asked in; None when none matches."""
    for wording in (template.pattern, *template.paraphrases):
        if pattern_regex(wording).match(question):
            return wording
    return None


def never_trained_wording(template: Template, question: str) -> bool:
    """A question in a held-out paraphrase, or in a wording neither the template nor its train paraphrases hold."""
    wording = wording_of(template, question)
    return wording is None or (wording != template.pattern and wording in template.held_out_paraphrases)


def held_out_worded(rows: list[dict]) -> list[int]:
    """Indexes of the conversations (``Conversation`` JSON rows) whose ECG-QA question is in a wording no
    training data may use (`never_trained_wording`); rows of other tasks and without a template are kept."""
    templates = load_templates()
    out = []
    for k, row in enumerate(rows):
        tid = (row.get("meta") or {}).get("template_id")
        if tid is None or int(tid) not in templates:
            continue
        question = next((t["content"] for t in row.get("turns", []) if t.get("role") == "user"), None)
        if question is not None and never_trained_wording(templates[int(tid)], question):
            out.append(k)
    return out


# ------------------------------------------------------------------------------ building the data files
_LEAD_RE = re.compile(r"\blead (?:I{1,3}|aV[RLF]|V[1-6])\b")


@lru_cache(maxsize=512)
def pattern_regex(pattern: str) -> re.Pattern:
    """A regex that matches every question of ``pattern`` and captures each placeholder by name."""
    parts = re.split(r"\$\{(\w+?)\}", pattern)
    out = []
    for i, part in enumerate(parts):
        out.append(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)")
    return re.compile("^" + "".join(out) + "$")


def values_of(template: Template, question: str) -> dict[str, str] | None:
    """The placeholder values of an official template-version question (None: the wording differs)."""
    match = pattern_regex(template.pattern).match(question)
    return None if match is None else match.groupdict()


def _to_pattern(question: str, values: dict[str, str]) -> str | None:
    """A paraphrased question with its values put back as placeholders; None unless each occurs once."""
    text = question
    # longest first, so that "myocardial infarction in inferior leads" wins over "myocardial infarction"
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        pattern = re.escape(value) + (r"(?![0-9A-Za-z])" if name == "lead" else "")
        if len(re.findall(pattern, text)) != 1:
            return None
        text = re.sub(pattern, "${" + name + "}", text)
    return text


def _read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def build_data_files(ecgqa_dir: Path, out_dir: Path = DATA) -> dict:
    """Write ``ecgqa_templates.json`` and ``ecgqa_paraphrases.json`` into ``out_dir`` from the official
    **train** files under ``ecgqa_dir`` (``ecgqa/ptbxl/{template,paraphrased}/train/*`` and
    ``official_sample/*_train.json``). Valid and test files are never read."""
    import ast
    import csv

    root = ecgqa_dir / "ecgqa" / "ptbxl"
    with (root / "answers_for_each_template.csv").open(newline="") as fh:
        classes = {int(r["template_id"]): sorted(ast.literal_eval(r["classes"])) for r in csv.DictReader(fh)}
    files = {v: sorted((root / v / "train").glob("*.json*")) + [ecgqa_dir / "official_sample" / f"{v}_train.json"]
             for v in ("template", "paraphrased")}
    templates = {tid: Template(tid, q, a, p, (), *RULES[tid], completed=False, vocabulary=_universe(RULES[tid][0], tid))
                 for tid, (q, a, p) in PATTERNS.items()}
    by_key: dict[tuple[str, int], dict[str, str]] = {}
    observed: Counter = Counter()
    for path in files["template"]:
        for s in _read(path):
            values = values_of(templates[s["template_id"]], s["question"])
            if values is None:
                raise ValueError(f"{path}: sample {s['sample_id']}: {s['question']!r} does not match template "
                                 f"{s['template_id']}'s wording")
            by_key[(path.stem.split(".")[0], s["sample_id"])] = values
            observed[s["template_id"]] += 1
    wordings: dict[int, Counter] = defaultdict(Counter)
    unmatched: Counter = Counter()
    for path in files["paraphrased"]:
        chunk = path.stem.split(".")[0].replace("paraphrased", "template")
        for s in _read(path):
            values = by_key.get((chunk, s["sample_id"])) or _values_from_fields(templates[s["template_id"]], s)
            pattern = None if values is None else _to_pattern(s["question"], values)
            if pattern is None:
                unmatched[s["template_id"]] += 1
                continue
            wordings[s["template_id"]][pattern] += 1
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TEMPLATES_JSON.name).write_text(json.dumps([
        {"template_id": tid, "question_type": q, "attribute_type": a, "pattern": p,
         "observed": observed[tid] > 0, "official_train_samples": observed[tid],
         "answer_classes": classes.get(tid, [])} for tid, (q, a, p) in PATTERNS.items()], indent=1) + "\n")
    (out_dir / PARAPHRASES_JSON.name).write_text(json.dumps({
        "source": "official ECG-QA (PTB-XL) paraphrased train samples in ../shared/data/ecgqa (no valid/test)",
        "templates": {str(t): sorted(w) for t, w in sorted(wordings.items())},
        "samples_read": sum(sum(w.values()) for w in wordings.values()),
        "samples_without_a_pattern": dict(sorted(unmatched.items()))}, indent=1) + "\n")
    load_templates.cache_clear()
    return {"observed": len(observed), "paraphrased_templates": len(wordings), "unmatched": sum(unmatched.values())}


def _values_from_fields(t: Template, sample: dict) -> dict[str, str] | None:
    """Placeholder values of an official sample from its attribute field and question (no template twin)."""
    names = t.placeholders
    question = sample["question"]
    values: dict[str, str] = {}
    lead = _LEAD_RE.findall(question)
    if "${lead}" in t.pattern:
        if len(lead) != 1:
            return None
        values["lead"] = lead[0]
    if not names:
        return values
    from ecgllm.datasets.ecgqa_attributes import FEATURES, RANGE_NAMES

    if t.scope.startswith("numeric"):
        features = [f for f in FEATURES if f in question]
        ranges = sorted((r for r in RANGE_NAMES if r in question), key=question.index)
        for name in names:
            if name == "numeric_feature":
                if len(features) != 1:
                    return None
                values[name] = features[0]
            elif ranges:
                values[name] = ranges.pop(0)
            else:
                return None
        return values
    named = sorted((v for v in t.values if v in question), key=len, reverse=True)
    named = [v for v in named if not any(v != w and v in w for w in named)]  # drop values inside longer ones
    named.sort(key=question.index)
    if len(named) != len(names):
        return None
    return dict(zip(names, named)) | values


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the packaged ECG-QA template files from official data.")
    parser.add_argument("--build", required=True, type=Path, help="the ECG-QA folder of ../shared/data (ecgqa/)")
    print(build_data_files(parser.parse_args().build))


if __name__ == "__main__":
    main()
