"""Backdoor adjustment helpers for the severity confounder S (see `ecgllm.datasets.severity`).

P(A | do(Q), E) = Σ_s P(A | Q, E, s) P(s). Two estimators use these pieces:
- intervention sampling: `ECGQAGenerator.generate(intervention=True)` draws s ~ P(s) (the pool's stratum shares),
  then a record of stratum s, then the question. The first two steps give every record of the pool the same
  chance, exactly as the plain (observational) draw does; what cuts S -> Q is the third. The observational
  generator picks, half the time, a statement the record has, and retries draws until a verify question gets
  the yes/no it aimed at: both make the question depend on the record. Under intervention the values are drawn
  independently of the record and no answer is aimed at. Comparison-verify templates still presume a status
  in the first ECG, so their value depends on it (not cut). Each sample records ``sampling``; the trainer runs
  ``debias: intervention`` only on intervention samples;
- inverse-propensity weights P(s) / P(s | q) from counts (`ipw_weights`), applied to each sample's loss.

A third, stratified adjustment (the stratum as an input in training, averaged over P(s) at inference), was
removed: the stratum is computed from the very labels the answers come from, so training fed the model an oracle
input; a stratum predicted from the ECG instead is a function of the ECG, which conditioning on adds nothing to,
and averaging over it would feed the model ECG/stratum pairs it never saw.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ecgllm.datasets.conversation import write_json_lines
from ecgllm.datasets.severity import SUPERCLASS_STRATA, most_severe, strata_for, stratum_weights


def question_key(conversation: dict) -> str:
    """What the question asks, without the ECG: template id + the question text."""
    meta = conversation.get("meta", {})
    first_user = next(t["content"] for t in conversation["turns"] if t["role"] == "user")
    return f"{meta.get('template_id', '')}|{first_user.strip().lower()}"


def ipw_weights(questions: Sequence[str], strata: Sequence[str], smoothing: float = 1.0,
                clip: tuple[float, float] = (0.1, 10.0)) -> np.ndarray:
    """w = P(s) / P(s | q) per sample, with P(s | q) smoothed towards P(s) (``smoothing`` pseudo-counts) so
    rare questions are not given extreme weights; clipped, then scaled to mean 1."""
    prior = stratum_weights(list(strata))
    per_question: dict[str, Counter] = defaultdict(Counter)
    for q, s in zip(questions, strata):
        per_question[q][s] += 1
    weights = np.empty(len(questions))
    for i, (q, s) in enumerate(zip(questions, strata)):
        counts = per_question[q]
        p_s_given_q = (counts[s] + smoothing * prior[s]) / (sum(counts.values()) + smoothing)
        weights[i] = prior[s] / p_s_given_q
    weights = np.clip(weights, *clip)
    return weights / weights.mean()


def question_prior_accuracy(questions: Sequence[str], answers: Sequence[str], seed: int = 0) -> float:
    """How well the question alone predicts the answer: majority answer per question learnt on one half,
    scored on the other (a shortcut a model can take without reading the ECG)."""
    rng = np.random.default_rng(seed)
    half = rng.random(len(questions)) < 0.5
    majority: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for q, a, fit in zip(questions, answers, half):
        if fit:
            majority[q][a] += 1
            overall[a] += 1
    fallback = overall.most_common(1)[0][0] if overall else ""
    scored = [(majority[q].most_common(1)[0][0] if majority[q] else fallback) == a
              for q, a, fit in zip(questions, answers, half) if not fit]
    return float(np.mean(scored)) if scored else float("nan")


def annotate(in_jsonl: str | Path, out_jsonl: str | Path, ptbxl) -> dict:
    """Add ``meta.strata`` (per ECG), ``meta.stratum`` (the most severe) and ``meta.ipw_weight`` to every
    conversation; returns a summary (stratum shares, weight range, question-only prior accuracy)."""
    rows = [json.loads(line) for line in Path(in_jsonl).read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = {int(e["record_id"]) for r in rows for e in r["ecgs"]}
    strata = strata_for(ptbxl, ids)
    questions, sample_strata = [], []
    for r in rows:
        per_ecg = [strata.get(int(e["record_id"]), "no diagnostic label") for e in r["ecgs"]]
        r.setdefault("meta", {})["strata"] = per_ecg
        r["meta"]["stratum"] = most_severe(per_ecg)
        questions.append(question_key(r))
        sample_strata.append(r["meta"]["stratum"])
    weights = ipw_weights(questions, sample_strata)
    for r, w in zip(rows, weights):
        r["meta"]["ipw_weight"] = round(float(w), 5)
    write_json_lines(rows, out_jsonl)
    answers = [next(t["content"] for t in r["turns"] if t["role"] == "assistant") for r in rows]
    from sklearn.metrics import adjusted_mutual_info_score

    return {"conversations": len(rows), "stratum_share": stratum_weights(sample_strata),
            # the backdoor path S -> Q: ~0 when questions are drawn independently of the record's severity
            "stratum_question_ami": round(float(adjusted_mutual_info_score(sample_strata, questions)), 4),
            "ipw_weight_min": round(float(weights.min()), 4), "ipw_weight_max": round(float(weights.max()), 4),
            "question_prior_accuracy": round(question_prior_accuracy(questions, answers), 4),
            "strata_names": list(SUPERCLASS_STRATA)}
