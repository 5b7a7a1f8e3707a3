"""The 70 ECG-QA templates: official patterns where recovered, the rest completed by symmetry.

Each template gets a *rule*: which attribute it reads ("scope") and what it asks ("op"). Patterns
marked ``completed=True`` were never seen in official samples; they are written by the evident symmetry
with their neighbours (e.g. 43 "resolved" next to 44 "newly detected", mirroring 57 and 58).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TEMPLATES_JSON = Path(__file__).resolve().parents[1] / "data" / "ecgqa_templates.json"

# template_id -> (question_type, attribute_type, pattern) for the 25 patterns not in the official material.
COMPLETED_PATTERNS: dict[int, tuple[str, str, str]] = {
    3: ("single-query", "scp_code", "What kind of diagnostic superclass does this ECG show?"),
    7: ("single-choose", "scp_code", "Which rhythm-related symptom does this ECG show, ${scp_code1} or ${scp_code2}?"),
    12: ("single-verify", "scp_code", "Does this ECG show any diagnostic symptoms, including uncertain symptoms?"),
    13: ("single-verify", "scp_code", "Does this ECG show any diagnostic symptoms, excluding uncertain symptoms?"),
    14: ("single-verify", "scp_code", "Does this ECG show any rhythm-related symptoms other than sinus rhythm?"),
    15: ("single-verify", "scp_code", "Does this ECG show any form-related symptoms?"),
    21: ("single-choose", "heart_axis", "Which heart axis does this ECG show, ${heart_axis1} or ${heart_axis2}?"),
    22: ("single-query", "heart_axis", "What heart axis does this ECG show?"),
    23: ("single-verify", "stage_of_infarction", "Does this ECG show ${stage_of_infarction}?"),
    24: ("single-choose", "stage_of_infarction",
         "Which stage of myocardial infarction does this ECG show, ${stage_of_infarction1} or ${stage_of_infarction2}?"),
    25: ("single-query", "stage_of_infarction", "What stage of myocardial infarction does this ECG show?"),
    34: ("single-query", "noise", "What leads are showing ${noise} in this ECG?"),
    40: ("single-choose", "numeric_feature",
         "Which range does the ${numeric_feature} of this ECG fall in, ${range1} or ${range2}?"),
    43: ("comparison_consecutive-verify", "scp_code",
         "Compared to the previous tracing, has ${scp_code} been resolved in the recent tracing?"),
    47: ("comparison_consecutive-query", "scp_code",
         "What symptoms have been resolved in the recent tracing as compared to the previous one?"),
    49: ("comparison_consecutive-query", "scp_code",
         "What symptoms still remain in the recent tracing as compared to the previous one?"),
    51: ("comparison_consecutive-verify", "numeric_feature",
         "Compared to the previous tracing, has the ${numeric_feature} of the recent tracing become abnormal?"),
    52: ("comparison_consecutive-verify", "numeric_feature",
         "Compared to the previous tracing, does the ${numeric_feature} of the recent tracing still show an abnormal value?"),
    53: ("comparison_consecutive-verify", "numeric_feature",
         "Compared to the previous tracing, is the ${numeric_feature} of the recent tracing still normal?"),
    55: ("comparison_consecutive-query", "numeric_feature",
         "What numeric features of the recent tracing are now considered abnormal values compared to the previous one?"),
    56: ("comparison_consecutive-query", "numeric_feature",
         "What numeric features of the recent tracing are still abnormal compared to the previous one?"),
    58: ("comparison_irrelevant-verify", "scp_code",
         "Compared to the first ECG, has ${scp_code} been newly detected in the second ECG?"),
    64: ("comparison_irrelevant-verify", "numeric_feature",
         "Compared to the first ECG, has the ${numeric_feature} of the second ECG become normal?"),
    65: ("comparison_irrelevant-verify", "numeric_feature",
         "Compared to the first ECG, has the ${numeric_feature} of the second ECG become abnormal?"),
    67: ("comparison_irrelevant-verify", "numeric_feature",
         "Compared to the first ECG, is the ${numeric_feature} of the second ECG still normal?"),
}

# template_id -> (scope, op). Scopes name the attribute set a template reads; ops name the question.
RULES: dict[int, tuple[str, str]] = {
    1: ("diagnostic_incl", "verify3"), 2: ("normal", "verify"), 3: ("superclass", "query"),
    4: ("diagnostic_incl", "choose"), 5: ("diagnostic_excl", "choose"), 6: ("form", "choose"),
    7: ("rhythm", "choose"), 8: ("diagnostic_incl", "query"), 9: ("diagnostic_excl", "query"),
    10: ("rhythm", "query"), 11: ("form", "query"), 12: ("diagnostic_incl", "verify_any"),
    13: ("diagnostic_excl", "verify_any"), 14: ("rhythm_not_sr", "verify_any"), 15: ("form", "verify_any"),
    16: ("statement", "verify"), 17: ("statement_lead", "unsupported"), 18: ("form_lead", "unsupported"),
    19: ("statement_leads", "unsupported"),
    20: ("heart_axis", "verify"), 21: ("heart_axis", "choose"), 22: ("heart_axis", "query"),
    23: ("stage", "verify"), 24: ("stage", "choose"), 25: ("stage", "query"),
    26: ("noise_lead", "verify"), 27: ("noise", "verify"), 28: ("noise_lead", "verify_any"),
    29: ("noise", "verify_any"), 30: ("noise", "choose"), 31: ("noise_lead", "choose"), 32: ("noise", "query"),
    33: ("noise_lead", "query"), 34: ("noise_leads", "query"),
    35: ("extra_systole", "verify_any"), 36: ("extra_systole", "verify"), 37: ("extra_systole", "choose"),
    38: ("extra_systole", "query"),
    39: ("numeric_range", "verify"), 40: ("numeric_range", "choose"), 41: ("numeric_range", "query"),
    42: ("numeric_in_range", "query"),
    43: ("statement", "resolved"), 44: ("statement", "new"), 45: ("statement", "remain"), 46: ("statement", "absent"),
    47: ("statement", "resolved"), 48: ("statement", "new"), 49: ("statement", "remain"),
    50: ("numeric", "become_normal"), 51: ("numeric", "become_abnormal"), 52: ("numeric", "still_abnormal"),
    53: ("numeric", "still_normal"), 54: ("numeric", "become_normal"), 55: ("numeric", "become_abnormal"),
    56: ("numeric", "still_abnormal"),
    57: ("statement", "resolved"), 58: ("statement", "new"), 59: ("statement", "remain"), 60: ("statement", "absent"),
    61: ("statement", "resolved"), 62: ("statement", "new"), 63: ("statement", "remain"),
    64: ("numeric", "become_normal"), 65: ("numeric", "become_abnormal"), 66: ("numeric", "still_abnormal"),
    67: ("numeric", "still_normal"), 68: ("numeric", "become_normal"), 69: ("numeric", "become_abnormal"),
    70: ("numeric", "still_abnormal"),
}


# Yes/no templates name a value from the vocabulary of a related choose/query template.
VOCABULARY_FROM: dict[int, int] = {
    1: 8, 12: 8, 13: 9, 14: 10, 15: 11, 16: 47, 17: 47, 20: 22, 28: 32, 29: 32, 35: 38, 23: 25, 26: 32, 27: 32, 34: 32, 36: 38, 43: 47, 44: 48, 45: 49, 46: 47,
    57: 61, 58: 62, 59: 63, 60: 61,
}
NONE_ANSWERS = ("none", "none of myocardial infarction")


@dataclass(frozen=True)
class Template:
    template_id: int
    question_type: str
    attribute_type: str
    pattern: str
    answer_classes: tuple[str, ...]
    scope: str
    op: str
    completed: bool
    vocabulary: tuple[str, ...] = ()

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


@lru_cache(maxsize=256)
def _value_set(vocabulary: tuple[str, ...]) -> frozenset[str]:
    return frozenset(vocabulary)


@lru_cache(maxsize=1)
def load_templates() -> dict[int, Template]:
    """All 70 templates with their rules (official patterns first, completions where none was seen)."""
    raw = json.loads(TEMPLATES_JSON.read_text())
    out: dict[int, Template] = {}
    for item in raw:
        tid = int(item["template_id"])
        completed = item["pattern"] is None
        qtype, atype, pattern = (COMPLETED_PATTERNS[tid] if completed else
                                 (item["question_type"], item["attribute_type"], item["pattern"]))
        scope, op = RULES[tid]
        out[tid] = Template(tid, qtype, atype, pattern, tuple(item["answer_classes"]), scope, op, completed)
    classes = {tid: tuple(c for c in t.answer_classes if c not in NONE_ANSWERS) for tid, t in out.items()}
    for tid, t in out.items():
        vocabulary = classes[VOCABULARY_FROM.get(tid, tid)]
        out[tid] = Template(**{**t.__dict__, "vocabulary": vocabulary})
    return out
