"""Model selection on ECG-QA *valid* only: candidate checkpoints scored on the same generated valid questions with
their own ECG and with another patient's ECG (`ecgllm eval ecgqa --probe none|random-ecg`), and the rule that
picks one, stated before the scores are read.

Rule: among the candidates whose EM with their own ECG is within 0.03 of the best, the one that loses most when
given another patient's ECG (the issue's reliance target); ties go to the earlier candidate (list the default of the time first).

    ecgllm data generate ecgqa --ptbxl shared/data/ptbxl --ecgqa shared/data/ecgqa/ecgqa --split valid --n 300 \\
        --seed 21 --template-ids TEMPLATES --out monitor/valid_gen.json      # TEMPLATES: SELECTION_TEMPLATES
    ecgllm eval ecgqa --data monitor/valid_gen.json --ptbxl cache/ptbxl100 --labels shared/data/ptbxl \\
        --model CHECKPOINT --out monitor/NAME-none --probe none        # and --probe random-ecg -> NAME-random-ecg
    python benchmarks/ecgqa_selection.py --monitor monitor --candidates shipped s300 s600 s900 \\
        -> benchmarks/results/ecgqa_selection.json, docs/results/ecgqa_selection.md

Candidates whose run folders are gone (a machine's scratch space) can be carried over from an earlier result of this
script on the same questions (``--earlier benchmarks/results/NAME.json``): their figures are copied, marked with
the date of that result; the rule then reads them beside the new ones. At least one candidate must be scored anew
that the earlier result also holds (the shipped one), with the same n and EMs, to show the questions are the same:
``--earlier`` stops otherwise.

A larger single-verify check, where a candidate has it (``monitor/NAME-verify``): the single-verify questions of
3,000 generated valid questions (seed 41), answered with the candidate's own ECG. It is reported beside the rule,
not used by it (the rule was fixed before it existed):

    ecgllm data generate ecgqa ... --split valid --n 3000 --seed 41 --template-ids TEMPLATES --out valid3000.json
    (keep its single-verify samples: monitor/valid_verify.json)
    ecgllm eval ecgqa --data monitor/valid_verify.json ... --model CHECKPOINT --out monitor/NAME-verify
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from common import ROOT, environment, write_result

# the heart-axis (20-22) and numeric-feature (39-42, 50-56, 64-70) templates: their answers need ECG-QA's own
# measurements (`ecgllm data measure ptbxl --ecgqa-features`)
NUMERIC_AXIS_TEMPLATES = [20, 21, 22, 39, 40, 41, 42, *range(50, 57), *range(64, 71)]
# TEMPLATES of the monitor sets: every other template, as in the LLM stages' generated data
# (recipes/ecgqa/instruct.yaml), as ids for `--template-ids`
SELECTION_TEMPLATES = [str(t) for t in range(1, 71) if t not in NUMERIC_AXIS_TEMPLATES]
EM_TOLERANCE = 0.03


def verify_balance(run: Path) -> dict:
    table = pd.read_csv(run / "per_sample.csv")
    return verify_balance_of(table[table["question_type"] == "single-verify"])


def verify_balance_of(verify: pd.DataFrame) -> dict:
    positive, negative = verify[verify["gold"] == "yes"], verify[verify["gold"] == "no"]
    sensitivity = float((positive["prediction"] == "yes").mean()) if len(positive) else None
    specificity = float((negative["prediction"] == "no").mean()) if len(negative) else None
    balanced = None if sensitivity is None or specificity is None else (sensitivity + specificity) / 2
    return {"n": int(len(verify)), "sensitivity": sensitivity, "specificity": specificity, "balanced_acc": balanced}


def per_template(run: Path) -> dict[str, dict]:
    """Single-verify questions per template: balanced accuracy and the AUC of the model's p(yes) (how well it ranks
    yes above no, whatever its threshold)."""
    from sklearn.metrics import roc_auc_score

    table = pd.read_csv(run / "per_sample.csv")
    with (run / "predictions.jsonl").open() as fh:  # a sample id repeats across variants: key on both
        rows = [json.loads(line) for line in fh if line.strip()]
    p_yes = {(row.get("variant") or "", row["sample_id"]): row.get("p_yes") for row in rows}
    table["p_yes"] = [p_yes.get((v if isinstance(v, str) else "", s))
                      for v, s in zip(table["variant"], table["sample_id"])]
    out = {}
    for template, rows in table[table["question_type"] == "single-verify"].groupby("template_id"):
        truth = rows["gold"] == "yes"
        auc = float(roc_auc_score(truth, rows["p_yes"])) if 0 < truth.sum() < len(rows) and rows["p_yes"].notna().all() \
            else None
        out[str(template)] = {"n": int(len(rows)), "balanced_acc": verify_balance_of(rows)["balanced_acc"],
                              "auc_p_yes": None if auc is None else round(auc, 3)}
    return out


def correct_answers(run: Path) -> int:
    return int(pd.read_csv(run / "per_sample.csv")["correct"].astype(bool).sum())


def score(monitor: Path, name: str) -> dict:
    real, other = monitor / f"{name}-none", monitor / f"{name}-random-ecg"
    real_metrics = json.loads((real / "metrics.json").read_text())
    other_metrics = json.loads((other / "metrics.json").read_text())
    # from counts, not from the rounded EMs: two candidates that lose as many answers tie exactly
    drop = (correct_answers(real) - correct_answers(other)) / real_metrics["n"]
    report = (real / "report.md").read_text()
    model = next((line.split("`")[1] for line in report.splitlines() if line.startswith("| model |")), None)
    return {"name": name, "model": "/".join(Path(model).parts[-2:]) if model else None, "n": real_metrics["n"],
            "em": real_metrics["overall_em"], "em_random_ecg": other_metrics["overall_em"],
            "drop_random_ecg": round(drop, 4),
            "single_verify": verify_balance(real),
            "single_verify_large": verify_balance(monitor / f"{name}-verify")
            if (monitor / f"{name}-verify" / "metrics.json").exists() else None,
            "single_verify_large_per_template": per_template(monitor / f"{name}-verify")
            if (monitor / f"{name}-verify" / "metrics.json").exists() else None}


def candidate(monitor: Path, name: str, earlier: dict | None) -> dict:
    """``name`` scored from its run folders, or carried over from an ``earlier`` result when they are gone; one
    scored anew that the earlier result also holds must agree with it (else the questions are not the same)."""
    before = next((c for c in (earlier or {}).get("candidates", []) if c["name"] == name), None)
    if not (monitor / f"{name}-none" / "metrics.json").exists():
        if before is None:
            raise SystemExit(f"{name}: no run folders under {monitor} and no earlier result holds it")
        return {**before, "carried_over_from": before.get("carried_over_from") or earlier["environment"]["date"][:10]}
    scored = score(monitor, name)
    if before is not None:
        now, then = (scored["n"], scored["em"], scored["em_random_ecg"]), (before["n"], before["em"], before["em_random_ecg"])
        if now != then:
            raise SystemExit(f"{name}: n, EM, EM with another patient's ECG {now} now, {then} in the earlier result: "
                             f"not the same questions")
        scored["rescored"] = True
    return scored


def check_carried_over(candidates: list[dict]) -> None:
    """Rows copied from an earlier result count only beside one candidate re-scored identically on these questions."""
    if any(c.get("carried_over_from") for c in candidates) and not any(c.get("rescored") for c in candidates):
        raise SystemExit("--earlier: no candidate was scored anew that the earlier result also holds, so nothing "
                         "shows the questions are the same; re-score one (the shipped one)")


def choose(candidates: list[dict]) -> str:
    best = max(c["em"] for c in candidates)
    eligible = [c for c in candidates if c["em"] >= best - EM_TOLERANCE - 1e-9]  # "within" includes the edge
    return max(eligible, key=lambda c: (c["drop_random_ecg"], -candidates.index(c)))["name"]


def render(result: dict, name: str = "ecgqa_selection") -> str:
    lines = ["# Model selection on ECG-QA valid", "",
             f"Written by `benchmarks/ecgqa_selection.py` from `benchmarks/results/{name}.json`. "
             f"{result['split']}.", "", f"Rule: {result['rule']}", "",
             "| candidate | checkpoint | EM, own ECG | EM, another patient's ECG | drop | single-verify balanced acc "
             "(sens / spec, n) | larger single-verify set (sens / spec, n) |", "|---|---|---|---|---|---|---|"]

    def balance(v: dict | None) -> str:
        return "–" if v is None else f"{v['balanced_acc']:.3f} ({v['sensitivity']:.2f} / {v['specificity']:.2f}, {v['n']})"

    for c in result["candidates"]:
        carried = f" (carried over from the result of {c['carried_over_from']})" if c.get("carried_over_from") else ""
        lines.append(f"| {c['name']}{' (chosen)' if c['name'] == result['chosen'] else ''}{carried} | {c['model']} | "
                     f"{c['em']:.3f} | {c['em_random_ecg']:.3f} | {c['drop_random_ecg']:.3f} | "
                     f"{balance(c['single_verify'])} | {balance(c.get('single_verify_large'))} |")
    lines += ["", f"Chosen: **{result['chosen']}**.", ""]
    with_templates = [c for c in result["candidates"] if c.get("single_verify_large_per_template")]
    if with_templates:
        templates = sorted({t for c in with_templates for t in c["single_verify_large_per_template"]}, key=int)
        lines += ["Larger single-verify set, per template: AUC of the model's p(yes) (balanced accuracy of its "
                  "answers). Template 1 asks \"Does this ECG show symptoms of <statement>?\", 17 the same in one lead, "
                  "26-29 noise, 16 \"any rhythm-related symptoms\".", "",
                  "| template | n | " + " | ".join(c["name"] for c in with_templates) + " |",
                  "|---|---|" + "---|" * len(with_templates)]
        for t in templates:
            cells = []
            for c in with_templates:
                v = c["single_verify_large_per_template"].get(t)
                cells.append("–" if v is None or v["auc_p_yes"] is None else
                             f"{v['auc_p_yes']:.2f} ({v['balanced_acc']:.2f})")
            n = with_templates[0]["single_verify_large_per_template"].get(t, {}).get("n", "")
            lines.append(f"| {t} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--monitor", type=Path, required=True, help="folder of NAME-none / NAME-random-ecg runs")
    parser.add_argument("--candidates", nargs="+", required=True, help="names, the shipped checkpoint first")
    parser.add_argument("--note", default="", help="what the candidates are (recipes, steps)")
    parser.add_argument("--earlier", type=Path, metavar="JSON",
                        help="an earlier result of this script: candidates with no run folder under --monitor are "
                             "copied from it (a candidate scored in both must agree, or the questions differ)")
    parser.add_argument("--name", default="ecgqa_selection",
                        help="results name: benchmarks/results/NAME.json and docs/results/NAME.md (default "
                             "ecgqa_selection, the page that chose the shipped checkpoint)")
    args = parser.parse_args()
    earlier = json.loads(args.earlier.read_text()) if args.earlier else None
    candidates = [candidate(args.monitor, name, earlier) for name in args.candidates]
    check_carried_over(candidates)
    result = {"split": (f"{candidates[0]['n']} generated questions over ECG-QA valid ECGs (seed 21; no training "
                        f"stage saw a valid patient)"),
              "rule": (f"among candidates whose EM with their own ECG is within {EM_TOLERANCE} of the best, the one "
                       f"whose EM drops most with another patient's ECG; ties go to the earlier candidate"),
              "note": args.note, "candidates": candidates, "chosen": choose(candidates),
              "environment": environment()}
    write_result(f"{args.name}.json", result)
    page = ROOT / f"docs/results/{args.name}.md"
    page.write_text(render(result, args.name) + (f"\n{args.note}\n" if args.note else ""))
    print(render(result, args.name))


if __name__ == "__main__":
    main()
