"""Check the generator against the official ECG-QA release: regenerate each official sample's answer from our
labels (same template, ECGs and named values) and count agreement per template and per attribute type.

Official samples that cannot be checked are never scored as agreement. Two kinds are told apart:

* **bad input** (reported with its sample id, counted, skipped): an unknown template id, a named value or
  answer outside the template's answer list, an ECG id missing from PTB-XL, a question whose values cannot
  be read;
* **not covered**: the input is fine but our attributes do not define the answer (a numeric feature or
  heart axis we could not measure, a report missing).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from ecgllm.datasets.ecgqa_attributes import FEATURES, RANGE_NAMES, RecordAttributes
from ecgllm.datasets.ecgqa_templates import NONE_ANSWERS, load_templates

BAD_TEMPLATE = "unknown template id"
BAD_VALUE = "value outside the template's answer list"
BAD_ANSWER = "answer outside the template's answer list"
BAD_ECG = "ecg id missing from PTB-XL"
BAD_QUESTION = "question names no readable value"
NOT_COVERED = "not covered"
BAD_INPUT = (BAD_TEMPLATE, BAD_VALUE, BAD_ANSWER, BAD_ECG, BAD_QUESTION)


@dataclass
class Regeneration:
    """Our answer for one official sample, or why there is none."""

    answer: list[str] | None
    problem: str | None = None       # one of BAD_INPUT, NOT_COVERED, or None when answered
    detail: str = ""


def _known_values(t) -> set[str]:
    if t.scope.startswith("numeric"):
        return set(FEATURES) | set(RANGE_NAMES)
    return set(t.values)


def regenerate(sample, attributes: dict[int, RecordAttributes]) -> Regeneration:
    """Regenerate one official sample (`ecgllm.datasets.ecgqa.QASample`)."""
    from ecgllm.datasets.ecgqa_generator import answer_for, sample_values

    t = load_templates().get(sample.template_id)
    if t is None:
        return Regeneration(None, BAD_TEMPLATE, f"template {sample.template_id}")
    missing = [e for e in sample.ecg_id if e not in attributes]
    if missing:
        return Regeneration(None, BAD_ECG, f"ecg_id {missing}")
    # the official answer lists are the answers seen in train; lead lists are answers of their own
    classes = set(t.answer_classes) | set(NONE_ANSWERS)
    lead_answers = t.scope in ("form_leads", "noise_leads")
    outside = [a for a in sample.answer if a not in classes and not (lead_answers and a.startswith("lead "))]
    if t.answer_classes and outside:
        return Regeneration(None, BAD_ANSWER, f"answer {outside}")
    read = sample_values(t, sample)
    if read is None:
        return Regeneration(None, BAD_QUESTION, repr(sample.question))
    values, lead = read
    unknown = [v for v in values if v not in _known_values(t)]
    if unknown:
        return Regeneration(None, BAD_VALUE, f"value {unknown}")
    answer = answer_for(t, [attributes[e] for e in sample.ecg_id], values, lead, strict=False)
    if answer is None:
        return Regeneration(None, NOT_COVERED)
    return Regeneration(answer)


def generator_agreement(samples, attributes: dict[int, RecordAttributes], max_reported: int = 50) -> dict:
    """``{attribute_type: {"agreement": share, "n": scored, "not_covered": n}}`` plus ``per_template`` and
    ``bad_input`` (counts per problem and the first ``max_reported`` offending sample ids).

    Answers are compared as sets (the official variants list multi-answers in different orders).
    """
    hits: dict[str, int] = defaultdict(int)
    scored: dict[str, int] = defaultdict(int)
    skipped: dict[str, int] = defaultdict(int)
    per_template: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    bad: Counter = Counter()
    reported: list[dict] = []
    for s in samples:
        result = regenerate(s, attributes)
        if result.problem in BAD_INPUT:
            bad[result.problem] += 1
            if len(reported) < max_reported:
                reported.append({"sample_id": s.sample_id, "split": s.split, "variant": s.variant,
                                 "template_id": s.template_id, "problem": result.problem, "detail": result.detail})
            continue
        if result.answer is None:
            skipped[s.attribute_type] += 1
            per_template[s.template_id][2] += 1
            continue
        ok = set(result.answer) == set(s.answer)
        scored[s.attribute_type] += 1
        hits[s.attribute_type] += ok
        per_template[s.template_id][0] += ok
        per_template[s.template_id][1] += 1
    result = {a: {"agreement": round(hits[a] / scored[a], 4) if scored[a] else None, "n": scored[a],
                  "not_covered": skipped[a]} for a in sorted(set(scored) | set(skipped))}
    result["per_template"] = {t: {"agreement": round(h / n, 4) if n else None, "n": n, "not_covered": m}
                              for t, (h, n, m) in sorted(per_template.items())}
    result["bad_input"] = {"skipped": sum(bad.values()), "by_problem": dict(bad), "samples": reported}
    return result


def numeric_feature_agreement(samples, attributes: dict[int, RecordAttributes]) -> dict[str, dict]:
    """Agreement per numeric feature: a question about one feature (templates 39-41, 50-53, 64-67) counts
    for that feature; a question listing features (42, 54-56, 68-70) counts, for each feature defined in our
    measurements, whether it is listed in both answers or in neither."""
    from ecgllm.datasets.ecgqa_generator import sample_values

    hits: Counter = Counter()
    n: Counter = Counter()
    for s in samples:
        if s.attribute_type != "numeric_feature":
            continue
        result = regenerate(s, attributes)
        if result.answer is None:
            continue
        t = load_templates()[s.template_id]
        records = [attributes[e] for e in s.ecg_id]
        if t.kind == "query" and t.scope != "numeric_range":
            for f in FEATURES:
                if all(f in r.numeric for r in records):
                    n[f] += 1
                    hits[f] += (f in result.answer) == (f in s.answer)
        else:
            feature = sample_values(t, s)[0][0]
            n[feature] += 1
            hits[feature] += set(result.answer) == set(s.answer)
    return {f: {"agreement": round(hits[f] / n[f], 4) if n[f] else None, "n": n[f]} for f in FEATURES}


def official_samples(ecgqa_dir: str | Path, splits: tuple[str, ...] = ("train", "valid")) -> list:
    """Every official sample of ``splits`` under an ECG-QA folder such as ``../shared/data/ecgqa``: the chunks
    ``ecgqa/ptbxl/{template,paraphrased}/<split>/*`` and ``official_sample/{template,paraphrased}_<split>.json``."""
    from ecgllm.datasets.ecgqa import ECGQA, read_qa_file

    ecgqa_dir = Path(ecgqa_dir)
    qa = ECGQA(ecgqa_dir / "ecgqa")
    samples = []
    for split in splits:
        for variant in ("template", "paraphrased"):
            samples += qa.samples(split, variant)
            extra = ecgqa_dir / "official_sample" / f"{variant}_{split}.json"
            if extra.exists():
                samples += read_qa_file(extra, split, variant)
    return samples
