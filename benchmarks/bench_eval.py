"""Scoring speed: 100,000 ECG-QA predictions in free-text form (mixed case, reordered lists, synonyms,
some unparseable), scored end to end (read JSONL, parse, exact match, per-type summaries, bootstrap CIs).
Baseline in the same run: bare exact string comparison of sorted lists, which parses nothing.

    python benchmarks/bench_eval.py            -> benchmarks/results/eval_speed.json   (goal: <= 10 s)
"""

from __future__ import annotations

import gzip
import json
import random
import tempfile
import time
from pathlib import Path

from common import SHARED, environment, write_result

from ecgllm.evaluation.ecgqa_score import score_file

N = 100_000
STYLES = (lambda a: ", ".join(a), lambda a: " and ".join(reversed(a)).upper(), lambda a: list(a),
          lambda a: "; ".join(a).title() + ".", lambda a: "I am not sure what this shows")


def main() -> None:
    chunks = sorted((SHARED / "ecgqa/ecgqa/ptbxl/template").rglob("*.json.gz"))
    base = [s for c in chunks for s in json.load(gzip.open(c, "rt"))]
    rng = random.Random(0)
    gold, preds = [], []
    for i in range(N):
        s = dict(base[i % len(base)], sample_id=i)
        gold.append(s)
        preds.append({"sample_id": i, "answer": STYLES[rng.randrange(len(STYLES))](s["answer"])})
    with tempfile.TemporaryDirectory() as tmp:
        gold_path, pred_path = Path(tmp) / "gold.json", Path(tmp) / "preds.jsonl"
        gold_path.write_text(json.dumps(gold))
        pred_path.write_text("".join(json.dumps(p) + "\n" for p in preds))
        t0 = time.perf_counter()
        bare = sum(sorted(json.loads(line)["answer"]) == sorted(g["answer"])
                   for line, g in zip(pred_path.read_text().splitlines(), gold) if isinstance(json.loads(line)["answer"], list))
        baseline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics, _ = score_file(pred_path, gold_path)
        seconds = time.perf_counter() - t0
    write_result("eval_speed.json", {
        "predictions": N, "score_s": round(seconds, 2), "predictions_per_s": round(N / seconds),
        "goal_s": 10.0, "bare_string_compare_s": round(baseline_s, 2),
        "ratio_to_bare_compare": round(seconds / baseline_s, 1),
        "overall_em": metrics["overall_em"], "unparseable": metrics["unparseable"],
        "bare_compare_matches": int(bare), "environment": environment()})


if __name__ == "__main__":
    main()
