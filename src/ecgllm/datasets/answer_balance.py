"""Balance the answers of yes/no questions per wording, so the wording alone predicts nothing.

ECG-QA's official verify questions are mostly answered "no" ("Does this ECG show static noise in lead V3?": 71 %
"no" in the stage-3 training mix), so a model that learns the answer prior gets most of them right without the
ECG, and says "no" to the rare ECG that has the finding: its balanced accuracy stays low even when its p(yes)
ranks the ECGs well. Here the rarer answer of each verify question (its exact wording: template 26 asks about four
noises in twelve leads, and "static noise" was mostly "yes" where "electrodes problems" was mostly "no") is repeated
(drawn without replacement, cycling) until both answers are equally common, each conversation at most ``max_repeats`` more times (one
conversation copied thirty times would be learned by heart, not balanced); nothing is dropped. Conversations of other question types, of
templates with only one answer, and with other answers ("not sure") are kept as they are.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

YES_NO = ("yes", "no")


def _verify_key(row: dict) -> tuple[int, str, str] | None:
    """(template, question, answer) of a single-answer yes/no verify conversation; None for any other."""
    meta, turns = row.get("meta"), row.get("turns")
    if not isinstance(meta, dict) or not isinstance(turns, list):
        return None
    turns = [t for t in turns if isinstance(t, dict) and isinstance(t.get("content"), str)]
    answers = [t["content"].strip().lower() for t in turns if t.get("role") == "assistant"]
    questions = [t["content"].strip().lower() for t in turns if t.get("role") == "user"]
    if not str(meta.get("question_type", "")).endswith("verify") or not isinstance(meta.get("template_id"), int):
        return None
    if len(answers) != 1 or answers[0] not in YES_NO or len(questions) != 1:
        return None
    return meta["template_id"], questions[0], answers[0]


def balance_verify_answers(rows: list[dict], seed: int = 0,
                           max_repeats: int = 3) -> tuple[list[dict], dict[int, dict[str, int]]]:
    """``rows`` plus repeated copies of each verify question's rarer answer (ids suffixed ``-repeat-N``); and per
    template the counts ``{"yes": n, "no": n, "added": n}`` (yes/no before balancing)."""
    if max_repeats < 0:
        raise ValueError(f"max_repeats must be 0 or more, got {max_repeats}")
    groups: dict[tuple[int, str], dict[str, list[int]]] = defaultdict(lambda: {a: [] for a in YES_NO})
    for i, row in enumerate(rows):
        key = _verify_key(row)
        if key is not None:
            groups[key[:2]][key[2]].append(i)
    rng = np.random.default_rng(seed)
    added: list[dict] = []
    taken = {str(row.get("id")) for row in rows}  # a file balanced twice keeps its ids unique
    summary: dict[int, dict[str, int]] = {}
    for template, question in sorted(groups):
        by_answer = groups[(template, question)]
        counts = {a: len(by_answer[a]) for a in YES_NO}
        rare = min(YES_NO, key=lambda a: counts[a])
        missing = counts[YES_NO[1 - YES_NO.index(rare)]] - counts[rare]
        missing = min(missing, max_repeats * counts[rare])  # 0 when the question has one answer only
        picks: list[int] = []
        while len(picks) < missing:
            picks.extend(rng.permutation(by_answer[rare])[: missing - len(picks)].tolist())
        for i in picks:
            copy = json.loads(json.dumps(rows[i]))  # a copy: the caller may edit rows later
            number = len(added)
            while f"{copy.get('id', i)}-repeat-{number}" in taken:
                number += 1
            copy["id"] = f"{copy.get('id', i)}-repeat-{number}"  # resumable runs key on ids
            taken.add(copy["id"])
            added.append(copy)
        total = summary.setdefault(template, {"yes": 0, "no": 0, "added": 0})
        for answer in YES_NO:
            total[answer] += counts[answer]
        total["added"] += len(picks)
    return rows + added, summary


def read_rows(path: str | Path) -> list[dict]:
    """The conversations of a JSONL file as dicts; ValueError naming the line of one that is not."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: a conversation is a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
