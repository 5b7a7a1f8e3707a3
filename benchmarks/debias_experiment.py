"""The de-biasing experiment: vanilla training against the backdoor estimators, three seeds per arm, paired tests
between arms on the same questions, and a verdict per criterion of the seed paper.

Each run ARM-SEED is trained by `recipes/debias/ARM.yaml` (`--seed SEED --output_dir RUNS/ARM-SEED`; the recipes say
how the training data were made) and answered with `ecgllm eval ecgqa` into RUNS/eval/ARM-SEED/:

    template-none        generated test questions over ECG-QA *test* ECGs, template wording   (--probe none)
    paraphrased-none     the same questions worded by official paraphrases the arms never saw  (--probe none)
    template-random-ecg  template wording, each question given another patient's ECG          (--probe random-ecg)
    template-blind       template wording, no ECG                                               (--probe blind)
    valid-none           generated ECG-QA *valid* questions (model selection)                   (--probe none)

`benchmarks/debias_arm.py ARM` runs all of it for one arm (data, training, these evaluations) and resumes.
The test sets are generated over ECG-QA test ECGs (the same questions in both wordings), the valid set over
ECG-QA valid ECGs (the model-selection monitor set), from the folder that holds runs/ and cache/:

    G="ecgllm data generate ecgqa --ptbxl ../shared/data/ptbxl --ecgqa ../shared/data/ecgqa/ecgqa"
    $G --split test --n 400 --seed 12 --out runs/debias/data/test_template.json
    $G --split test --n 400 --seed 12 --paraphrase 1.0 --out runs/debias/data/test_paraphrased.json
    $G --split valid --n 300 --seed 21 --template-ids TEMPLATES --out monitor/valid_gen.json

(TEMPLATES: `SELECTION_TEMPLATES` of `benchmarks/ecgqa_selection.py`) and each run is answered on the first 300 test and 150 valid sample ids (``--limit``), for example:

    ecgllm eval ecgqa --data runs/debias/data/test_template.json --ptbxl cache/ptbxl100 \\
        --labels ../shared/data/ptbxl --model runs/debias/vanilla-1/final --probe none --limit 300 \\
        --out runs/debias/eval/vanilla-1/template-none

This script trains and answers nothing: it reads those runs and writes benchmarks/results/debias.json,
docs/results/debias.md and docs/results/debias.png.

    python benchmarks/debias_experiment.py --runs ../cache/runs/debias --shipped-valid ../cache/monitor/shipped-none

A later default that keeps the arms' encoder and head (they take nothing else from it) is compared without new arms:

    python benchmarks/debias_experiment.py --update-shipping ../cache/monitor/qnd-none ../cache/monitor/cmc-none \
        --arms-start ../cache/models/q600 --default src/ecgllm/data/checkpoint

(EARLIER, TODAY: `ecgllm eval ecgqa` runs on monitor/valid_gen.json, ``--limit 150``, of the default last compared
and of the run shipped today, each run from the folder above its model; a default no longer at hand comes back
from git: ``git archive COMMIT src/ecgllm/data/checkpoint``, e.g. 0279a2c for continue_question_balanced_bf16_nodropout,
5279160 for shipped_q600, the arms' start.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from common import RESULTS, ROOT, environment, same_tensors, write_result
from ecgqa_selection import EM_TOLERANCE

SETS = ("template-none", "paraphrased-none", "template-random-ecg", "template-blind", "valid-none")
MIN_STRATUM = 20  # questions a severity stratum needs to count in the spread (smaller ones are noise)
CRITERIA = {  # name: (what it measures, +1 when larger is better / -1 when smaller is better)
    "paraphrase_gap": ("template EM − paraphrased EM on the questions whose wording differs", -1),
    "random_ecg_drop": ("template EM − EM with another patient's ECG", +1),
    "stratum_spread": (f"largest − smallest EM over severity strata of ≥ {MIN_STRATUM} questions", -1),
}


def load_run(folder: Path) -> dict[str, pd.DataFrame]:
    missing = [s for s in SETS if not (folder / s / "metrics.json").exists()]  # written last: the run is whole
    if missing:
        raise SystemExit(f"{folder}: not evaluated yet ({', '.join(missing)} missing); see --help")
    return {s: pd.read_csv(folder / s / "per_sample.csv").set_index("sample_id").sort_index() for s in SETS}


def check_aligned(runs: dict[str, list[dict[str, pd.DataFrame]]], names: dict[str, list[str]]) -> None:
    """Every run must have answered the very same questions of every set (same ids, ECGs, templates and gold
    answers): paired tests and seed means are meaningless otherwise, so a mismatch stops with the run's name."""
    columns = ["ecg_id", "template_id", "gold"]
    first_arm = next(iter(runs))
    for s in SETS:
        reference = runs[first_arm][0][s][columns]
        if not reference.index.is_unique:
            raise SystemExit(f"{names[first_arm][0]}/{s}: a sample id is answered twice")
        for arm, seeds in runs.items():
            for name, run in zip(names[arm], seeds):
                if not run[s][columns].equals(reference):
                    raise SystemExit(f"{name}/{s}: not the questions {names[first_arm][0]}/{s} answered (another "
                                     f"--data or --limit?); re-run its evaluation as the others were run")


def reworded_ids(data: Path) -> set[int]:
    """Sample ids whose paraphrased wording differs from the template wording."""
    template = {s["sample_id"]: s["question"] for s in json.loads((data / "test_template.json").read_text())}
    return {s["sample_id"] for s in json.loads((data / "test_paraphrased.json").read_text())
            if s["sample_id"] in template and template[s["sample_id"]] != s["question"]}


def correct(frame: pd.DataFrame) -> pd.Series:
    return frame["correct"].astype(bool).astype(float)


def stratum_em(frame: pd.DataFrame) -> dict[str, float]:
    return {str(k): round(float(v), 4) for k, v in correct(frame).groupby(frame["stratum"]).mean().items()}


def stratum_spread(frame: pd.DataFrame) -> float:
    sizes = frame["stratum"].value_counts()
    kept = frame[frame["stratum"].isin(sizes[sizes >= MIN_STRATUM].index)]
    ems = correct(kept).groupby(kept["stratum"]).mean()
    return float(ems.max() - ems.min())


def run_summary(sets: dict[str, pd.DataFrame], reworded: set[int], seed: int) -> dict:
    template, para = sets["template-none"], sets["paraphrased-none"]
    ids = sorted(set(template.index) & set(para.index) & reworded)
    summary = {"seed": seed,
               "template_em": round(float(correct(template).mean()), 4),
               "paraphrased_em": round(float(correct(para).mean()), 4),
               "random_ecg_em": round(float(correct(sets["template-random-ecg"]).mean()), 4),
               "blind_em": round(float(correct(sets["template-blind"]).mean()), 4),
               "valid_em": round(float(correct(sets["valid-none"]).mean()), 4),
               "stratum_em": stratum_em(template),
               "stratum_n": {str(k): int(v) for k, v in template["stratum"].value_counts().items()},
               "per_question_type_template": {str(k): round(float(v), 4) for k, v in
                                              correct(template).groupby(template["question_type"]).mean().items()},
               "per_question_type_paraphrased": {str(k): round(float(v), 4) for k, v in
                                                 correct(para).groupby(para["question_type"]).mean().items()},
               "reworded_questions": len(ids)}
    summary["paraphrase_gap"] = round(float(correct(template.loc[ids]).mean() - correct(para.loc[ids]).mean()), 4)
    summary["random_ecg_drop"] = round(summary["template_em"] - summary["random_ecg_em"], 4)
    summary["stratum_spread"] = round(stratum_spread(template), 4)
    return summary


def spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": round(float(a.mean()), 4), "sd": round(float(a.std(ddof=1)), 4) if len(a) > 1 else 0.0,
            "min": round(float(a.min()), 4), "max": round(float(a.max()), 4)}


def mcnemar_test(a: pd.Series, b: pd.Series) -> dict:
    """McNemar's test on paired right/wrong answers (exact binomial when few pairs disagree)."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = a.astype(bool), b.astype(bool)
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    discordant = table[0][1] + table[1][0]
    result = mcnemar(table, exact=discordant < 25)
    return {"n": int(len(a)), "only_first_correct": table[0][1], "only_second_correct": table[1][0],
            "p_value": float(f"{result.pvalue:.4g}")}


def paired_bootstrap(arm: list[dict[str, pd.DataFrame]], vanilla: list[dict[str, pd.DataFrame]],
                     reworded: set[int], criterion: str, seed: int = 0) -> dict:
    """95 % interval of (arm − vanilla) in one criterion, averaged over seeds, resampling the test questions
    (the same resample for both arms: a paired bootstrap, `scipy.stats.bootstrap`). The runs answered the same
    questions in the same order (`check_aligned`)."""
    from scipy.stats import bootstrap

    template = arm[0]["template-none"]
    is_reworded = template.index.isin(list(reworded))
    strata = template["stratum"].astype("category").cat.codes.to_numpy()

    def arrays(runs):
        return [{k: correct(r[k]).to_numpy() for k in ("template-none", "template-random-ecg", "paraphrased-none")}
                for r in runs]

    arm_arrays, vanilla_arrays = arrays(arm), arrays(vanilla)

    def spread_of(values, codes) -> float:
        counts = np.bincount(codes, minlength=strata.max() + 1)
        sums = np.bincount(codes, weights=values, minlength=strata.max() + 1)
        kept = counts >= MIN_STRATUM
        ems = sums[kept] / counts[kept]
        return float(ems.max() - ems.min()) if len(ems) else 0.0

    def value(runs, index) -> float:
        out = []
        for r in runs:
            t = r["template-none"][index]
            if criterion == "random_ecg_drop":
                out.append(t.mean() - r["template-random-ecg"][index].mean())
            elif criterion == "paraphrase_gap":
                kept = index[is_reworded[index]]
                out.append(r["template-none"][kept].mean() - r["paraphrased-none"][kept].mean())
            else:
                out.append(spread_of(t, strata[index]))
        return float(np.mean(out))

    def statistic(index):
        index = np.asarray(index, dtype=int)
        return value(arm_arrays, index) - value(vanilla_arrays, index)

    every = np.arange(len(template))
    res = bootstrap((every,), statistic, vectorized=False, n_resamples=1000, method="percentile",
                    random_state=np.random.default_rng(seed))
    return {"difference": round(statistic(every), 4),
            "ci95": [round(float(res.confidence_interval.low), 4), round(float(res.confidence_interval.high), 4)]}


def verdict(arm: dict, vanilla: dict, boot: dict, direction: int) -> str:
    """Better only when the estimator beats vanilla by more than the seed-to-seed spread and the paired interval
    excludes no difference; worse likewise; otherwise no difference."""
    gain = direction * (arm["mean"] - vanilla["mean"])
    noise = max(arm["sd"], vanilla["sd"])
    low, high = boot["ci95"]
    if gain > noise and (low > 0 if direction > 0 else high < 0):
        return "better than vanilla"
    if -gain > noise and (high < 0 if direction > 0 else low > 0):
        return "worse than vanilla"
    return "no difference"


def shipped_valid_em(folder: Path | None, reference: pd.DataFrame) -> float | None:
    """The shipped model's EM on exactly the valid questions the arms answered (all of them, or it stops)."""
    if folder is None:
        return None
    frame = pd.read_csv(folder / "per_sample.csv").set_index("sample_id")
    columns = ["ecg_id", "template_id", "gold"]
    if not set(reference.index) <= set(frame.index) or not frame.loc[reference.index, columns].equals(
            reference[columns]):
        raise SystemExit(f"{folder}: did not answer the valid questions the arms answered")
    return round(float(correct(frame.loc[reference.index]).mean()), 4)


def arm_beats(best_em: float, shipped_em: float | None) -> bool:
    # "beats" as the selection rule of the shipped model reads EM: by more than its tolerance (150 questions are
    # few; the arms' answers with another patient's ECG on valid, the rule's other half, are not measured)
    return shipped_em is not None and best_em > shipped_em + EM_TOLERANCE


def shipping_decision(best: str, best_em: float, tied: list[str], shipped_em: float | None, n: int) -> str:
    beats = arm_beats(best_em, shipped_em)
    return (f"The best arm on ECG-QA valid is **{best}**"
            + (f" (tied with {', '.join(tied)}; the first listed is taken)" if tied else "")
            + f" (EM {best_em:.3f}, mean over seeds, {n} generated valid questions). "
            + (f"The shipped default answers the same questions with EM {shipped_em:.3f}: " if shipped_em is not None
               else "The shipped default was not scored: ")
            + (f"the arm beats it by more than the selection rule's tolerance ({EM_TOLERANCE}) and replaces it."
               if beats else f"no arm beats it by more than the selection rule's tolerance ({EM_TOLERANCE}), so the "
               "default stays as it is."))


def first_valid_em(folder: Path, n: int) -> tuple[float, pd.DataFrame]:
    """EM over the first ``n`` sample ids of an `ecgllm eval ecgqa` run: the questions a ``--limit n`` run answers."""
    frame = pd.read_csv(folder / "per_sample.csv").set_index("sample_id").sort_index()
    rows = frame.loc[sorted(set(frame.index))[:n]]
    return round(float(correct(rows).mean()), 4), rows


def same_encoder_and_head(first: Path, second: Path) -> bool:
    """Whether two model folders hold the same signal encoder, classifier head, label names and signal
    preparation: all that ``encoder_init`` takes from a folder."""
    from ecgllm.models.encoder_source import encoder_head, encoder_labels, encoder_meta, encoder_state

    first, second = Path(first), Path(second)
    return (same_tensors(encoder_state(first), encoder_state(second))
            and same_tensors(encoder_head(first) or {}, encoder_head(second) or {})
            and encoder_meta(first) == encoder_meta(second)
            and encoder_labels(first) == encoder_labels(second))


def scored_model(evaluation: Path) -> Path:
    """The model folder an `ecgllm eval` run scored: its recorded (relative) path, found from the folder the
    evaluation ran in (an ancestor of the run folder)."""
    recorded = Path(json.loads((evaluation / "metrics.json").read_text())["run"]["model"])
    for base in [evaluation.resolve(), *evaluation.resolve().parents]:
        if (base / recorded).is_dir():
            return base / recorded
    raise SystemExit(f"{evaluation}: the model it scored ({recorded}) is not found from its folder")


def same_answering_weights(first: Path, second: Path) -> bool:
    """Whether two model folders answer with the same weights (a run's final folder and its shipped copy)."""
    from ecgllm.models.model_folder import saved_weights

    def answering(folder: Path) -> dict:  # a shipped copy may carry an image encoder its run had not
        return {k: v for k, v in saved_weights(folder).items() if not k.startswith("image_encoder.")}

    return same_tensors(answering(Path(first)), answering(Path(second)))


TODAY = ", the run shipped as today's default"  # how the page names the default an update compared


def update_shipping(result: dict, earlier: Path, today: Path) -> dict:
    """Decide the shipping again against today's default, from the arms' recorded valid EMs, without their runs.

    The arms took only the encoder and its classifier head from the default they started from (``encoder_init``);
    a later default that keeps them (frozen) needs no new arms, only its own valid EM on the same questions.
    ``earlier`` must reproduce the EM recorded for the default the arms were compared with, exactly: the proof
    that ``today`` is scored on the very questions the arms answered."""
    shipping = result["shipping"]
    n = shipping["valid_questions"]
    earlier_em, earlier_rows = first_valid_em(earlier, n)
    model = json.loads((today / "metrics.json").read_text())["run"]["model"]
    before = shipping.get("earlier_comparison")
    # A re-run of the last update scores the same model as today's again: it is compared with the default before it.
    # Told apart by the model's name, not by EM alone (two defaults can answer k of n alike).
    if before and model == shipping.get("compared_model", "").removesuffix(TODAY).strip("`"):
        if earlier_em != before["valid_em"]:
            raise SystemExit(f"{earlier}: EM {earlier_em} on the first {n} valid questions, but the default compared "
                             f"before {model} had {before['valid_em']}: not the same questions or not the same model")
        shipping = {**shipping, "compared_model": before["model"], "shipped_model_valid_em": earlier_em}
    elif earlier_em != shipping["shipped_model_valid_em"]:
        raise SystemExit(f"{earlier}: EM {earlier_em} on the first {n} valid questions, but the arms were last "
                         f"compared with {shipping['shipped_model_valid_em']}: not the same questions or not the same "
                         "model")
    today_em, today_rows = first_valid_em(today, n)
    columns = ["ecg_id", "template_id", "gold"]
    if not today_rows[columns].equals(earlier_rows[columns]):
        raise SystemExit(f"{today}: did not answer the valid questions the arms answered")
    best = shipping["best_arm_by_valid"]
    decision = shipping_decision(best, shipping["best_arm_valid_em"], shipping["tied_with"], today_em, n)
    earlier_model = shipping.get("compared_model", "`runs/ecgqa/shipped_q600`").removesuffix(TODAY)
    result["shipping"] = {**shipping, "shipped_model_valid_em": today_em, "compared_model": f"`{model}`{TODAY}",
                          "earlier_comparison": {"model": earlier_model,
                                                 "valid_em": earlier_em}, "decision": decision}
    result["shipped_arm"] = best if arm_beats(shipping["best_arm_valid_em"], today_em) else None
    result["shipping_date"] = environment()["date"]
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(result["arms"])
    fig, axes = plt.subplots(1, len(CRITERIA), figsize=(4 * len(CRITERIA), 3.4))
    for ax, (name, (meaning, direction)) in zip(axes, CRITERIA.items()):
        for x, arm in enumerate(arms):
            values = [s[name] for s in result["arms"][arm]["seeds"]]
            ax.bar(x, np.mean(values), color="#cfd8e3", edgecolor="#4a5a70")
            ax.scatter([x] * len(values), values, color="#1f3b73", zorder=3, s=18)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_title(f"{name.replace('_', ' ')} ({'higher' if direction > 0 else 'lower'} is better)", fontsize=9)
        ax.axhline(0, color="black", lw=0.6)
    fig.suptitle("De-biasing arms: seed values (dots) and their mean (bar)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(result: dict) -> str:
    arms = list(result["arms"])
    lines = ["# De-biasing experiment: vanilla against the backdoor estimators", "",
             "Written by `benchmarks/debias_experiment.py` from `benchmarks/results/debias.json`.", "",
             result["design"], "", f"Test split: {result['test_split']}", "",
             "The severity strata (their sizes per ECG-QA split, and P(yes | template, stratum) under the "
             "observational and the intervention draw) are measured on `strata.md` (`benchmarks/strata.py`).", "",
             "## Per arm (mean ± sd over seeds; each seed's value in `debias.json`)", "",
             "| arm | seeds | template EM | paraphrased EM | paraphrase gap | EM, another patient's ECG | "
             "random-ECG drop | blind EM | stratum spread | valid EM |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        s = result["arms"][arm]["summary"]

        def cell(key):
            return f"{s[key]['mean']:.3f} ± {s[key]['sd']:.3f}"

        lines.append(f"| {arm} | {len(result['arms'][arm]['seeds'])} | {cell('template_em')} | "
                     f"{cell('paraphrased_em')} | {cell('paraphrase_gap')} | {cell('random_ecg_em')} | "
                     f"{cell('random_ecg_drop')} | {cell('blind_em')} | {cell('stratum_spread')} | "
                     f"{cell('valid_em')} |")
    types = sorted({t for arm in arms for seed in result["arms"][arm]["seeds"]
                    for t in seed.get("per_question_type_template", {})})
    if types:
        lines += ["", "## EM per question type (mean over seeds: template wording / unseen paraphrased wording)", "",
                  "| arm | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
        for arm in arms:
            seeds = result["arms"][arm]["seeds"]

            def mean(key: str, qtype: str) -> str:
                values = [s[key][qtype] for s in seeds if qtype in s.get(key, {})]
                return f"{np.mean(values):.2f}" if values else "–"

            lines.append(f"| {arm} | " + " | ".join(f"{mean('per_question_type_template', t)} / "
                                                   f"{mean('per_question_type_paraphrased', t)}" for t in types) + " |")
    drops = {arm: result["arms"][arm]["summary"]["random_ecg_drop"]["mean"] for arm in arms}
    lines += ["", f"Scale: the largest mean random-ECG drop of any arm is {max(drops.values()):.3f}; at this budget "
              "every arm answers mostly from the question, which bounds what an estimator can change (the shipped "
              "model, trained far longer, is on `ecgqa_evidence.md`).",
              "", "![seed values and means](debias.png)", "", "## Verdict per criterion", "",
              "An estimator is *better* (or *worse*) than vanilla only when the difference of the seed means exceeds "
              "the larger seed-to-seed sd of the two arms **and** the paired bootstrap interval over the test "
              "questions excludes zero; otherwise *no difference*.", "",
              "| estimator | criterion | difference (arm − vanilla) | paired 95 % interval | verdict |",
              "|---|---|---|---|---|"]
    for arm, comparison in result["comparisons"].items():
        for name, c in comparison["criteria"].items():
            lines.append(f"| {arm} | {name.replace('_', ' ')}: {CRITERIA[name][0]} | {c['difference']:+.3f} | "
                         f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | **{c['verdict']}** |")
    lines += ["", "## Paired tests of answers (McNemar on the same questions: seed k against vanilla's seed k, and "
              "each question's majority answer over the seeds)", "",
              "| estimator | wording | pairing | questions | only estimator right | only vanilla right | p |",
              "|---|---|---|---|---|---|---|"]
    for arm, comparison in result["comparisons"].items():
        for wording, tests in comparison["mcnemar"].items():
            rows = [(f"seed {s['seed']}", t) for s, t in zip(result["arms"][arm]["seeds"], tests["per_seed"])]
            for pairing, t in rows + [("majority over seeds", tests["majority_over_seeds"])]:
                lines.append(f"| {arm} | {wording} | {pairing} | {t['n']} | {t['only_first_correct']} | "
                             f"{t['only_second_correct']} | {t['p_value']:.3g} |")
    shipped = result["shipping"]
    compared = shipped.get("compared_model", "the checkpoint every arm started from "
                                             "(`encoder_init: runs/ecgqa/shipped_q600`)")
    lines += ["", "## Shipping", "", shipped["decision"] + f" The default compared here is {compared}."]
    if "earlier_comparison" in shipped:
        earlier = shipped["earlier_comparison"]
        lines += ["", "The arms took only the encoder and its classifier head from the default they started from "
                  "(`encoder_init: runs/ecgqa/shipped_q600`); today's default keeps both, frozen, bit for bit, so "
                  "the arms stand for it unchanged and only its own valid EM is new. The default they were last "
                  f"compared with ({earlier['model']}): its run on those questions, read beside today's, gives the EM "
                  f"recorded for it ({earlier['valid_em']:.3f}), and the two runs asked the same questions (sample ids, "
                  "ECGs, templates and answers due), so today's default answered the very questions the arms did."]
    lines += ["", f"Command: `{result['command']}`"]
    if "shipping_command" in result:
        lines += ["", f"Shipping decided again: `{result['shipping_command']}`"]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, help="folder of ARM-SEED runs, eval/ and data/")
    parser.add_argument("--arms", nargs="+", default=["vanilla", "intervention", "ipw"],
                        help="arms; the first is the reference (default: vanilla intervention ipw)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--shipped-valid", type=Path,
                        help="`ecgllm eval ecgqa` run of the shipped model on the same valid questions")
    parser.add_argument("--update-shipping", nargs=2, type=Path, metavar=("EARLIER", "TODAY"),
                        help="decide the shipping again from benchmarks/results/debias.json against today's default "
                             "(no runs read): EARLIER and TODAY are `ecgllm eval ecgqa` runs, on the arms' valid "
                             "questions, of the default the arms were compared with (it must reproduce its recorded "
                             "EM exactly) and of today's default")
    parser.add_argument("--arms-start", type=Path, help="with --update-shipping: the model folder the arms took their "
                        "encoder and head from (their recipes' encoder_init)")
    parser.add_argument("--default", type=Path, help="with --update-shipping: today's default model folder; it must "
                        "hold the same encoder and head as --arms-start")
    parser.add_argument("--page-only", action="store_true",
                        help="re-render docs/results/debias.md from benchmarks/results/debias.json (no runs read)")
    args = parser.parse_args()
    if args.update_shipping:
        if args.arms_start is None or args.default is None:
            parser.error("--update-shipping needs --arms-start and --default (the arms stand for a default only "
                         "when it keeps the encoder and head they started from)")
        try:
            same = same_encoder_and_head(args.arms_start, args.default)
        except FileNotFoundError as exc:
            raise SystemExit(f"--arms-start/--default must be model folders with an encoder: {exc}") from None
        if not same:
            raise SystemExit(f"{args.default} holds another encoder or head than {args.arms_start}, where the arms "
                             "started: train the arms again from it")
        if not same_answering_weights(scored_model(args.update_shipping[1]), args.default):
            raise SystemExit(f"{args.update_shipping[1]} scored another model than {args.default}")
        result = update_shipping(json.loads((RESULTS / "debias.json").read_text()), *args.update_shipping)
        result["shipping_command"] = (f"python benchmarks/debias_experiment.py --update-shipping "
                                      f"{' '.join(map(str, args.update_shipping))} --arms-start {args.arms_start} "
                                      f"--default {args.default}")
        write_result("debias.json", result)
        (ROOT / "docs/results/debias.md").write_text(render(result))
        print(result["shipping"]["decision"])
        return
    if args.page_only:
        (ROOT / "docs/results/debias.md").write_text(render(json.loads((RESULTS / "debias.json").read_text())))
        return
    if args.runs is None:
        parser.error("--runs is required (or --page-only)")
    reworded = reworded_ids(args.runs / "data")
    names = {arm: [f"{arm}-{seed}" for seed in args.seeds] for arm in args.arms}
    runs = {arm: [load_run(args.runs / "eval" / name) for name in names[arm]] for arm in args.arms}
    check_aligned(runs, names)
    result: dict = {"arms": {}, "comparisons": {}}
    for arm in args.arms:
        seeds = [run_summary(r, reworded, seed) for r, seed in zip(runs[arm], args.seeds)]
        keys = ["template_em", "paraphrased_em", "random_ecg_em", "blind_em", "valid_em", *CRITERIA]
        result["arms"][arm] = {"seeds": seeds, "summary": {k: spread([s[k] for s in seeds]) for k in keys}}
    reference = args.arms[0]
    for arm in args.arms[1:]:
        criteria = {}
        for name, (_, direction) in CRITERIA.items():
            boot = paired_bootstrap(runs[arm], runs[reference], reworded, name)
            criteria[name] = {**boot, "verdict": verdict(result["arms"][arm]["summary"][name],
                                                         result["arms"][reference]["summary"][name], boot, direction)}
        tests = {}
        for wording, key in (("template", "template-none"), ("paraphrased", "paraphrased-none")):
            # seeds answer the same questions, so their pairs are not independent: one test per seed, and one on
            # each question's majority answer over the seeds
            per_seed = [mcnemar_test(correct(a[key]), correct(v[key])) for a, v in zip(runs[arm], runs[reference])]
            majority = [pd.concat([correct(r[key]) for r in group], axis=1).mean(axis=1) > 0.5
                        for group in (runs[arm], runs[reference])]
            tests[wording] = {"per_seed": per_seed, "majority_over_seeds": mcnemar_test(*majority)}
        result["comparisons"][arm] = {"criteria": criteria, "mcnemar": tests}
    valid = runs[reference][0]["valid-none"]
    valid_ids = list(valid.index)
    best = max(args.arms, key=lambda a: result["arms"][a]["summary"]["valid_em"]["mean"])  # a tie: the first
    best_em = result["arms"][best]["summary"]["valid_em"]["mean"]
    tied = [a for a in args.arms if a != best and result["arms"][a]["summary"]["valid_em"]["mean"] == best_em]
    shipped_em = shipped_valid_em(args.shipped_valid, valid)
    result["shipping"] = {
        "best_arm_by_valid": best, "best_arm_valid_em": best_em, "shipped_model_valid_em": shipped_em,
        "valid_questions": len(valid_ids), "tied_with": tied,
        "compared_model": "the checkpoint every arm started from (`encoder_init: runs/ecgqa/shipped_q600`)",
        "decision": shipping_decision(best, best_em, tied, shipped_em, len(valid_ids))}
    result["shipped_arm"] = best if arm_beats(best_em, shipped_em) else None
    first = runs[reference][0]
    result["design"] = ("Arms: " + ", ".join(args.arms) + f"; seeds {args.seeds}. Each trains the same budget "
                        "(recipes/debias/ARM.yaml: 2,000 template-worded questions over ECG-QA train ECGs, 250 "
                        "steps of batch 8, the shipped encoder and classifier head as the start) and is scored on "
                        "the same questions.")
    evaluated_reworded = int(first["template-none"].index.isin(list(reworded)).sum())
    result["test_split"] = (f"{len(first['template-none'])} generated questions over ECG-QA test ECGs (never trained "
                            f"on, by any stage), template wording and official paraphrases the arms never saw "
                            f"({evaluated_reworded} of them are worded differently; the gap is measured on those); "
                            "the probes use the template wording.")
    result["command"] = "python benchmarks/debias_experiment.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v is not None and k != "page_only")
    result.update(environment())
    write_result("debias.json", result)
    plot(result, ROOT / "docs/results/debias.png")
    (ROOT / "docs/results/debias.md").write_text(render(result))
    print(f"wrote {ROOT / 'docs/results/debias.md'}")


if __name__ == "__main__":
    main()
