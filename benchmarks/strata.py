"""The severity strata of the de-biasing, documented and measured: how many records each ECG-QA split has per
stratum, and how the answer of the main templates depends on the stratum, under the generator's observational
draw (the vanilla arm's data) and under its intervention draw (the `intervention` arm's data).

The strata are `ecgllm.datasets.severity.superclass_stratum` of each record's PTB-XL labels; a prompt with two ECGs
takes the more severe one (`most_severe`). The questions are drawn here, in the process, exactly as
`ecgllm data generate ecgqa --split train --n N --seed S [--intervention]` draws them (template wording, no
measurement table, so the numeric-range templates are not asked), over ECG-QA train ECGs.

If the answer depends on the stratum within a template (P(yes | template, s) differs across s), and the question
depends on the stratum too (adjusted mutual information of stratum and question > 0), the wording predicts the
answer through severity: the shortcut the backdoor adjustment removes. Writes benchmarks/results/strata.json and
docs/results/strata.md:

    python benchmarks/strata.py --ptbxl ../shared/data/ptbxl --ecgqa ../shared/data/ecgqa/ecgqa
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from common import ROOT, environment, write_result

MIN_TEMPLATE = 300   # single-verify templates with at least this many questions (in the observational draw) are shown
MIN_CELL = 20        # a P(yes | template, stratum) from fewer questions is left blank


def draw(generator, n: int, seed: int, intervention: bool) -> list[dict]:
    return generator.generate(n, seed=seed, intervention=intervention)


def prompt_stratum(sample: dict, strata: dict[int, str]) -> str:
    from ecgllm.datasets.severity import most_severe

    return most_severe([strata[int(e)] for e in sample["ecg_id"]])


def measure(samples: list[dict], strata: dict[int, str], templates: list[int]) -> dict:
    """Stratum shares, stratum-question dependence, and P(yes | template, stratum) for ``templates``."""
    from sklearn.metrics import adjusted_mutual_info_score

    stratum = [prompt_stratum(s, strata) for s in samples]
    counts = Counter(stratum)
    yes: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for s, st in zip(samples, stratum):
        if s["template_id"] in templates:
            yes[s["template_id"]][st].append(int(s["answer"] == ["yes"]))
    single = [i for i, x in enumerate(samples) if len(x["ecg_id"]) == 1]
    per_template = {}
    for t in templates:
        cells = {st: {"n": len(v), "p_yes": round(sum(v) / len(v), 3) if len(v) >= MIN_CELL else None}
                 for st, v in sorted(yes[t].items())}
        every = [a for v in yes[t].values() for a in v]
        shown = [c["p_yes"] for c in cells.values() if c["p_yes"] is not None]
        per_template[str(t)] = {"n": len(every), "p_yes": round(sum(every) / max(len(every), 1), 3),
                                "by_stratum": cells,
                                "range": round(max(shown) - min(shown), 3) if len(shown) > 1 else None}
    return {"questions": len(samples),
            "stratum_share": {k: round(v / len(samples), 4) for k, v in sorted(counts.items())},
            "ami_stratum_question": round(float(adjusted_mutual_info_score(stratum, [s["question"] for s in samples])), 4),
            "ami_stratum_template": round(float(adjusted_mutual_info_score(stratum, [s["template_id"] for s in samples])), 4),
            # one-ECG questions alone: a two-ECG prompt takes the more severe of two strata, so comparison
            # templates lean severe whatever the draw
            "ami_stratum_question_single_ecg": round(float(adjusted_mutual_info_score(
                [stratum[i] for i in single], [samples[i]["question"] for i in single])), 4),
            "single_verify": per_template}


def render(result: dict) -> str:
    from ecgllm.datasets.severity import SUPERCLASS_STRATA

    lines = ["# Severity strata: sizes, and how the answer depends on them", "",
             f"Written by `{result['command']}` from `benchmarks/results/strata.json`; every figure below is read "
             "from that file.", "", result["definition"], "", "## Records per stratum (PTB-XL labels)", "",
             "| ECG-QA split | records | " + " | ".join(SUPERCLASS_STRATA) + " |",
             "|---|---|" + "---|" * len(SUPERCLASS_STRATA)]
    for split, row in result["records"].items():
        lines.append(f"| {split} | {row['records']} | "
                     + " | ".join(f"{row['count'].get(s, 0)} ({row['share'].get(s, 0):.1%})" for s in SUPERCLASS_STRATA)
                     + " |")
    for name, title in (("observational", "observational draw (the vanilla arm's data)"),
                        ("intervention", "intervention draw, do(Q) (the `intervention` arm's data)")):
        m = result["sampling"][name]
        lines += ["", f"## Generated train questions, {title}", "",
                  f"{m['questions']} questions (seed {result['seed']}). Prompt strata: "
                  + ", ".join(f"{k} {v:.1%}" for k, v in m["stratum_share"].items())
                  + f". Adjusted mutual information of stratum and question wording: {m['ami_stratum_question']} "
                  f"({m['ami_stratum_question_single_ecg']} over one-ECG questions); of stratum and template: "
                  f"{m['ami_stratum_template']}.", "",
                  "P(yes | template, stratum) for the single-verify templates with at least "
                  f"{MIN_TEMPLATE} questions in the observational draw (blank: fewer than {MIN_CELL} questions; "
                  "n in brackets):", "",
                  "| template | question | n | P(yes) | " + " | ".join(SUPERCLASS_STRATA) + " | range |",
                  "|---|---|---|---|" + "---|" * len(SUPERCLASS_STRATA) + "---|"]
        for t, row in m["single_verify"].items():
            cells = [row["by_stratum"].get(s) for s in SUPERCLASS_STRATA]
            lines.append(f"| {t} | {result['wording'][t]} | {row['n']} | {row['p_yes']:.2f} | "
                         + " | ".join("" if c is None or c["p_yes"] is None else f"{c['p_yes']:.2f} ({c['n']})"
                                      for c in cells)
                         + f" | {'' if row['range'] is None else format(row['range'], '.2f')} |")
    lines += ["", "## Reading", "", result["reading"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", type=Path, required=True, help="PTB-XL labels folder (ptbxl_database.csv)")
    parser.add_argument("--ecgqa", type=Path, required=True, help="the ECG-QA release folder (its split files)")
    parser.add_argument("--n", type=int, default=20000, help="questions per draw (default 20000)")
    parser.add_argument("--seed", type=int, default=11, help="generator seed (default 11, the arms' seed)")
    args = parser.parse_args()

    from ecgllm.datasets import ECGQA
    from ecgllm.datasets.ecgqa_attributes import build_attributes
    from ecgllm.datasets.ecgqa_generator import ECGQAGenerator
    from ecgllm.datasets.ecgqa_templates import load_templates
    from ecgllm.datasets.ptbxl import PTBXL
    from ecgllm.datasets.severity import strata_for
    from ecgllm.datasets.split_policy import load_policy

    ptbxl = PTBXL.load(args.ptbxl)
    known = set(int(i) for i in ptbxl.ecg_ids)
    splits = {split: ECGQA(args.ecgqa).split_ecg_ids(split) & known for split in ("train", "valid", "test")}
    load_policy().refuse(splits["train"], source=f"{args.ecgqa} train split", stage="strata")
    strata = strata_for(ptbxl, set().union(*splits.values()))
    records = {}
    for split, ids in splits.items():
        count = Counter(strata[i] for i in ids)
        records[split] = {"records": len(ids), "count": dict(count),
                          "share": {k: round(v / len(ids), 4) for k, v in count.items()}}
    generator = ECGQAGenerator(build_attributes(ptbxl, None), splits["train"],
                               strata={i: strata[i] for i in splits["train"]})
    observational = draw(generator, args.n, args.seed, intervention=False)
    intervention = draw(generator, args.n, args.seed, intervention=True)
    per_template = Counter(s["template_id"] for s in observational if s["question_type"] == "single-verify")
    templates = sorted(t for t, n in per_template.items() if n >= MIN_TEMPLATE)
    sampling = {"observational": measure(observational, strata, templates),
                "intervention": measure(intervention, strata, templates)}
    ranges = {name: [r["range"] for r in m["single_verify"].values() if r["range"] is not None]
              for name, m in sampling.items()}
    obs, intv = sampling["observational"], sampling["intervention"]
    reading = (f"Under the observational draw, P(yes) of a single-verify template moves across strata by "
               f"{min(ranges['observational']):.2f} to {max(ranges['observational']):.2f} (median "
               f"{sorted(ranges['observational'])[len(ranges['observational']) // 2]:.2f}); under the intervention "
               f"draw by {min(ranges['intervention']):.2f} to {max(ranges['intervention']):.2f}. The answer still "
               "depends on severity under do(Q), as it must (a severe ECG does show more findings); what the "
               "intervention cuts is stratum → question. Over one-ECG questions the adjusted mutual information of "
               f"stratum and wording falls from {obs['ami_stratum_question_single_ecg']} to "
               f"{intv['ami_stratum_question_single_ecg']}; over all questions from {obs['ami_stratum_question']} to "
               f"{intv['ami_stratum_question']}, the rest coming from comparisons, whose prompt takes the more "
               "severe of two strata, and whose yes/no templates presume a status in the first ECG. The "
               "observational draw also aims verify answers at a yes-rate (one in three), which the intervention "
               "draw does not: its P(yes) is each template's rate over the records."
               if ranges["observational"] and ranges["intervention"] else "Too few questions per stratum to compare.")
    result = {
        "definition": ("Strata (`ecgllm.datasets.severity.superclass_stratum`, from PTB-XL labels only): **normal** "
                       "(NORM and no abnormal diagnostic superclass), **one abnormal** (exactly one of CD, HYP, MI, "
                       "STTC), **several abnormal** (two or more), **no diagnostic label** (none of the five "
                       "superclasses). A prompt with two ECGs takes the more severe stratum of the two."),
        "records": records, "seed": args.seed, "sampling": sampling,
        "wording": {str(t): load_templates()[t].pattern for t in templates},
        "reading": reading,
        "command": "python benchmarks/strata.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
    }
    result.update(environment())
    write_result("strata.json", result)
    (ROOT / "docs/results/strata.md").write_text(render(result))
    print(f"wrote {ROOT / 'docs/results/strata.md'}")


if __name__ == "__main__":
    main()
