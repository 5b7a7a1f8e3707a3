"""Check the generator against the official ECG-QA release: regenerate each official sample's answer
from our labels (same template, ECGs and attributes) and count agreement per attribute type."""

from __future__ import annotations

from collections import defaultdict

from ecgllm.datasets.ecgqa_attributes import RecordAttributes
from ecgllm.datasets.ecgqa_generator import regenerate_answer


def generator_agreement(samples, attributes: dict[int, RecordAttributes]) -> dict:
    """``{attribute_type: {"agreement": share, "n": covered, "not_covered": n}}`` plus per-template detail.

    Answers are compared as sets (the official variants list multi-answers in different orders).
    """
    hits: dict[str, int] = defaultdict(int)
    covered: dict[str, int] = defaultdict(int)
    skipped: dict[str, int] = defaultdict(int)
    per_template: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for s in samples:
        ours = regenerate_answer(s, attributes)
        if ours is None:
            skipped[s.attribute_type] += 1
            continue
        ok = set(ours) == set(s.answer)
        covered[s.attribute_type] += 1
        hits[s.attribute_type] += ok
        per_template[s.template_id][0] += ok
        per_template[s.template_id][1] += 1
    result = {a: {"agreement": round(hits[a] / covered[a], 4) if covered[a] else None, "n": covered[a],
                  "not_covered": skipped[a]} for a in sorted(set(covered) | set(skipped))}
    result["per_template"] = {t: {"agreement": round(h / n, 4), "n": n} for t, (h, n) in sorted(per_template.items())}
    return result
