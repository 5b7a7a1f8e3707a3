"""Turn benchmarks/results/ecgqa_model.json into docs/results/ecgqa_model.md and its plot. Every number in the
page comes from that JSON, which `benchmarks/ecgqa_model.py` writes.

    python benchmarks/ecgqa_report.py
"""

from __future__ import annotations

import json

import matplotlib
import numpy as np
from common import RESULTS, ROOT

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = ROOT / "docs" / "results"
PROBES = [("template_em", "template"), ("paraphrased_em", "paraphrased"), ("random_ecg_em", "random ECG"),
          ("blind_em", "blind")]


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> None:
    r = json.loads((RESULTS / "ecgqa_model.json").read_text())
    arms = [("vanilla", r["vanilla"]), ("de-biased (shipped)", r)] + [
        (name.replace("_", " "), v) for name, v in r.get("other_models", {}).items()]
    DOCS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(PROBES))
    width = 0.8 / len(arms)
    for i, (name, values) in enumerate(arms):
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, [values[k] for k, _ in PROBES], width, label=name)
    ax.set_xticks(x, [label for _, label in PROBES])
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1)
    ax.set_title("ECG-QA official valid chunk (comparison_irrelevant-query)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "ecgqa_model.png", dpi=120)
    plt.close(fig)
    rows = ["| model | template EM | paraphrased EM | paraphrase gap | random-ECG EM | blind EM | random-ECG fall to blind |",
            "|---|---|---|---|---|---|---|"]
    for name, v in arms:
        rows.append(f"| {name} | {fmt(v['template_em'])} | {fmt(v['paraphrased_em'])} | {fmt(v['paraphrase_gap'])} | "
                    f"{fmt(v['random_ecg_em'])} | {fmt(v['blind_em'])} | {fmt(v['random_ecg_fall_towards_blind'])} |")
    gen_rows = []
    if "generated_fold10" in r:
        gen_rows = ["| model | EM | random-ECG EM | blind EM | fall to blind |", "|---|---|---|---|---|"]
        for name, v in ((n, a["generated_fold10"]) for n, a in arms):
            gen_rows.append(f"| {name} | {fmt(v['em'])} | {fmt(v['random_ecg_em'])} | {fmt(v['blind_em'])} | "
                            f"{fmt(v['random_ecg_fall_towards_blind'])} |")
        qtypes = sorted(r["generated_fold10"]["per_question_type"])
        gen_rows += ["", "| question type | " + " | ".join(n for n, _ in arms) + " |", "|---" * (len(arms) + 1) + "|"]
        gen_rows += [f"| {q} | " + " | ".join(fmt(a["generated_fold10"]["per_question_type"].get(q)) for _, a in arms)
                     + " |" for q in qtypes]
        strata = sorted({k for _, a in arms for k in a["generated_fold10"].get("per_stratum", {})})
        if strata:
            gen_rows += ["", "Severity stratum of the sample's (most severe) ECG:", "",
                         "| stratum | " + " | ".join(n for n, _ in arms) + " |", "|---" * (len(arms) + 1) + "|"]
            gen_rows += [f"| {k} | " + " | ".join(fmt(a["generated_fold10"].get("per_stratum", {}).get(k))
                                                 for _, a in arms) + " |" for k in strata]
    baselines = ["| baseline | official valid (template) | generated fold-10 test |", "|---|---|---|"]
    for name, em in r.get("baselines_official_valid_template", {}).items():
        baselines.append(f"| {name} | {fmt(em)} | {fmt(r.get('baselines_generated_fold10', {}).get(name))} |")
    reading = []
    for name, v in arms:
        for label, em, blind in (("official valid", v["template_em"], v["blind_em"]),
                                 ("generated fold-10", v.get("generated_fold10", {}).get("em"),
                                  v.get("generated_fold10", {}).get("blind_em"))):
            if em is None:
                continue
            margin = 3 / r["limit_sample_ids"]  # three samples: below that, a difference is noise at this size
            verdict = ("above blind by more than three samples: the ECG contributes" if em - blind > margin else
                       "within three samples of blind: no evidence here that the answers use the ECG")
            reading.append(f"- {name}, {label}: EM {em:.3f} vs blind {blind:.3f} — {verdict}.")
    best = max(r.get("baselines_official_valid_template", {}).values(), default=None)
    if best is not None:
        reading.append(f"- Best baseline on the official valid samples: {best:.3f}; de-biased model "
                       f"{r['template_em']:.3f}, vanilla {r['vanilla']['template_em']:.3f}.")
    reading.append(f"- Each set has {r['limit_sample_ids']} sample ids (so about {r['limit_sample_ids'] // 7} per "
                   f"question type on the generated set): differences of a few samples are noise, and with one "
                   f"seed there is no spread to compare against.")
    page = (DOCS / "ecgqa_model.template.md").read_text()
    page = page.replace("{{READING}}", "\n".join(reading))
    page = page.replace("{{MAIN_TABLE}}", "\n".join(rows)).replace("{{GENERATED_TABLE}}", "\n".join(gen_rows))
    page = page.replace("{{BASELINES}}", "\n".join(baselines)).replace("{{LIMIT}}", str(r["limit_sample_ids"]))
    (DOCS / "ecgqa_model.md").write_text(page)
    print(f"wrote {DOCS / 'ecgqa_model.md'}")


if __name__ == "__main__":
    main()
