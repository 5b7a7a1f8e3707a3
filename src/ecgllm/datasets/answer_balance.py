"""Balance the answers of yes/no questions per template, so the wording alone predicts nothing.

ECG-QA's official verify questions are mostly answered "no" ("Does this ECG show static noise in lead V3?": 71 %
"no" in the stage-3 training mix), so a model that learns the answer prior gets most of them right without the
ECG, and says "no" to the rare ECG that has the finding: its balanced accuracy stays low even when its p(yes)
ranks the ECGs well. Here the rarer answer of each verify template is repeated (drawn without replacement,
cycling) until both answers are equally common, each conversation at most ``max_repeats`` more times (one
conversation copied thirty times would be learned by heart, not balanced); nothing is dropped. Conversations of other question types, of
templates with only one answer, and with other answers ("not sure") are kept as they are.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

YES_NO = ("yes", "no")


def _verify_key(row: dict) -> tuple[int, str] | None:
    """(template, answer) of a single-answer yes/no verify conversation; None for any other."""
    meta = row.get("meta", {})
    answers = [t["content"].strip().lower() for t in row.get("turns", []) if t.get("role") == "assistant"]
    if not str(meta.get("question_type", "")).endswith("verify") or meta.get("template_id") is None:
        return None
    if len(answers) != 1 or answers[0] not in YES_NO:
        return None
    return int(meta["template_id"]), answers[0]


def balance_verify_answers(rows: list[dict], seed: int = 0,
                           max_repeats: int = 3) -> tuple[list[dict], dict[int, dict[str, int]]]:
    """``rows`` plus repeated copies of each verify template's rarer answer; and per template the counts
    ``{"yes": n, "no": n, "added": n}`` (before balancing)."""
    groups: dict[int, dict[str, list[int]]] = defaultdict(lambda: {a: [] for a in YES_NO})
    for i, row in enumerate(rows):
        key = _verify_key(row)
        if key is not None:
            groups[key[0]][key[1]].append(i)
    rng = np.random.default_rng(seed)
    added: list[dict] = []
    summary: dict[int, dict[str, int]] = {}
    for template in sorted(groups):
        by_answer = groups[template]
        counts = {a: len(by_answer[a]) for a in YES_NO}
        rare = min(YES_NO, key=lambda a: counts[a])
        missing = counts[YES_NO[1 - YES_NO.index(rare)]] - counts[rare]
        missing = min(missing, max_repeats * counts[rare])  # 0 when the template has one answer only
        picks: list[int] = []
        while len(picks) < missing:
            picks.extend(rng.permutation(by_answer[rare])[: missing - len(picks)].tolist())
        added.extend(json.loads(json.dumps(rows[i])) for i in picks)  # copies: the caller may edit rows later
        summary[template] = {**counts, "added": len(picks)}
    return rows + added, summary


def balance_file(in_jsonl: str | Path, out_jsonl: str | Path, seed: int = 0,
                 max_repeats: int = 3) -> dict[int, dict[str, int]]:
    """`balance_verify_answers` on a conversation JSONL, written atomically."""
    rows = []
    for number, line in enumerate(Path(in_jsonl).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{in_jsonl}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{in_jsonl}, line {number}: a conversation is a JSON object, got {type(row).__name__}")
        rows.append(row)
    balanced, summary = balance_verify_answers(rows, seed, max_repeats)
    out = Path(out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in balanced), encoding="utf-8")
    tmp.replace(out)
    return summary
