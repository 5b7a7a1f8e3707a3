"""Faithfulness probes in one report: the model with its ECGs, blind (no ECG), with random ECGs of other
patients; paraphrase gap and severity strata come from the with-ECG run when the data allows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ecgllm.evaluation.ecgqa_eval import EcgqaRun, evaluate_ecgqa
from ecgllm.models.default import load_checkpoint
from ecgllm.evaluation.report import run_info, write_run


def fall_towards_blind(em_model: float, em_random: float, em_blind: float) -> float:
    """Share of the way from the model's EM to blind EM that the random-ECG EM falls (1.0 = all the way).
    Undefined (nan) when the model is no better than blind: then the ECG was not used at all."""
    gap = em_model - em_blind
    return float("nan") if gap <= 0 else (em_model - em_random) / gap


def run_probes(data: Sequence[str], ptbxl: str, out: str, model: str | None = None, labels: str | None = None,
               limit: int | None = None, seed: int = 0, batch_size: int = 16, progress: bool = True,
               loaded=None, device: str = "auto", dtype: str = "auto") -> dict:
    """``loaded``: an already loaded (model, processor) pair (tests, or a caller that holds one)."""
    if loaded is None:
        *loaded, model_dir = load_checkpoint(model, device, dtype)
        model = str(model_dir)
    results = {}
    for probe in ("none", "blind", "random-ecg"):
        run = EcgqaRun(data=data, ptbxl=ptbxl, out=str(Path(out) / probe), model=model, probe=probe, labels=labels,
                       limit=limit, seed=seed, batch_size=batch_size)
        results[probe] = evaluate_ecgqa(run, *loaded, progress=progress)
    em = {p: r["overall_em"] for p, r in results.items()}
    fall = fall_towards_blind(em["none"], em["random-ecg"], em["blind"])
    summary = {"with_ecg_em": em["none"], "blind_em": em["blind"], "random_ecg_em": em["random-ecg"],
               "random_ecg_fall_towards_blind": None if math.isnan(fall) else round(fall, 4),
               "per_probe": em, "per_probe_ci95": {p: r["overall_em_ci95"] for p, r in results.items()},
               "per_probe_question_type": {p: r.get("per_question_type", {}) for p, r in results.items()}}
    if "paraphrase_gap" in results["none"]:
        summary["paraphrase_gap"] = results["none"]["paraphrase_gap"]
        summary["per_variant"] = results["none"]["per_variant"]
    if "per_stratum" in results["none"]:
        summary["per_probe_stratum"] = {p: r.get("per_stratum", {}) for p, r in results.items()}
    rows = ["| probe | EM [95% CI] |", "|---|---|"]
    rows += [f"| {p} | {r['overall_em']:.3f} [{r['overall_em_ci95'][0]:.3f}, {r['overall_em_ci95'][1]:.3f}] |"
             for p, r in results.items()]
    fall = summary["random_ecg_fall_towards_blind"]
    text = ("\n".join(rows) + "\n\nRandom-ECG falls "
            + (f"{fall:.0%} of the way from the model to blind." if fall is not None else
               "— undefined: the model is no better with its ECG than blind, so it does not use the ECG.")
            + "\n\nEach probe's own report (per question type, strata, confusion) is in its sub-folder.")
    sections = {"Probes": text}
    if "per_probe_stratum" in summary:
        strata = sorted({s for r in summary["per_probe_stratum"].values() for s in r})
        table = ["| stratum | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
        table += [f"| {s} | " + " | ".join(f"{summary['per_probe_stratum'][p].get(s, float('nan')):.3f}" for p in results)
                  + " |" for s in strata]
        sections["EM per severity stratum"] = "\n".join(table)
    write_run(out, summary, run_info(str(model), results["none"]["gold_version"], seed), "Faithfulness probes",
              sections)
    return summary
