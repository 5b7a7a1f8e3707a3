"""The ECGBench-style suite on ECG pictures, in one command, beside PULSE-7B's published ECGBench figures.

    python benchmarks/ecgbench_images.py --model src/ecgllm/data/checkpoint --signals ../cache/cache/ptbxl100 \\
        --generated-test ../cache/images_test.json --records 200 --limit 150 --out ../cache/ecgbench_images
    -> benchmarks/results/ecgbench_images.json, docs/results/ecgbench_images.md

1. `ecgllm eval ecgbench` with every recording shown as a distorted paper render (``--modality image-augmented``),
   and again as its signal for comparison: PTB-XL superclass detection on fold 10 ∩ ECG-QA test (macro AUC from
   P(yes); the 0/1 "AUC" that PULSE reports; macro F1; Hamming loss), multiple choice, report generation, and the
   CPSC 2018 and CODE-15% samples in ../shared (zero-shot: nothing here trained on them), scored the same way.
2. ECG-QA exact match on generated questions over ECG-QA test ECGs (``--generated-test``), the ECGs rendered with
   distortions.
3. PULSE-7B's published figures (benchmarks/references/pulse_ecgbench.json, with their source and protocol) beside
   them, and the protocol differences stated: different pictures, test sets, label sets and sizes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, SHARED, claim_run_folder, environment, stale_default_note, write_result

REFERENCE = ROOT / "benchmarks/references/pulse_ecgbench.json"
DOC = ROOT / "docs/results/ecgbench_images.md"
MODALITIES = ("image-augmented", "signal")


def run_suite(args: argparse.Namespace) -> dict:
    """Each run loads the checkpoint by its folder, so it checks its records against every training stage."""
    from ecgllm.evaluation.ecgbench import run_ecgbench
    from ecgllm.evaluation.ecgqa_eval import EcgqaRun, evaluate_ecgqa

    out = Path(args.out)
    result: dict = {"modalities": {}, "measured_model": claim_run_folder(out, Path(args.model))}
    for modality in MODALITIES:
        metrics = run_ecgbench(out / f"ecgbench-{modality}", args.signals, model=args.model, labels=args.ptbxl,
                               records=args.records, external=args.external, seed=args.seed,
                               batch_size=args.batch_size, device="cpu", dtype="float32", modality=modality)
        info = json.loads((out / f"ecgbench-{modality}" / "metrics.json").read_text())["run"]
        metrics["seen_in_training"] = info["seen_in_training"]
        result["model"] = info["model"]
        run = EcgqaRun(data=[args.generated_test], ptbxl=args.signals, out=str(out / f"ecgqa-{modality}"),
                       model=args.model, labels=args.ptbxl, limit=args.limit, modality=modality, seed=args.seed,
                       batch_size=args.batch_size, device="cpu", dtype="float32")
        ecgqa = evaluate_ecgqa(run)
        metrics["ecgqa"] = {"em": round(ecgqa["overall_em"], 4), "n": ecgqa["n"],
                            "ci95": [round(v, 4) for v in ecgqa["overall_em_ci95"]],
                            "seen_in_training": ecgqa["seen_in_training"]}
        result["modalities"][modality] = metrics
    return result


def shown_path(value):
    """Paths inside the checkout or beside it as the repo's commands write them (no machine's absolute paths)."""
    import os

    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(ROOT.parent):
        return os.path.relpath(value, ROOT)
    return value


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def write_doc(result: dict, reference: dict, command: str) -> None:
    pictures, signals = (result["modalities"][m] for m in MODALITIES)
    sets = reference["sets"]
    rows = []
    for name, ours_key, ref_key in (("PTB-XL superclasses", "superclass_detection", "ptbxl_super"),
                                    ("CODE-15%", "zero_shot_code15", "code15"),
                                    ("CPSC 2018", "zero_shot_cpsc2018", "cpsc2018")):
        p, s, r = pictures.get(ours_key, {}), signals.get(ours_key, {}), sets[ref_key]
        size = f"{p.get('records', '–')} records" + (f", {p['questions']} questions" if "questions" in p else "")
        rows.append(f"| {name} | {size} | {percent(p.get('macro_auc_from_scores'))} | "
                    f"{percent(p.get('auc_from_binary_answers_as_anchors_report'))} | {percent(p.get('macro_f1'))} | "
                    f"{percent(p.get('hamming_loss'))} | {percent(s.get('macro_auc_from_scores'))} | "
                    f"{percent(s.get('auc_from_binary_answers_as_anchors_report'))} | {r['n']} | {r['auc']} | "
                    f"{r['f1']} | {r['hamming_loss']} |")
    seen = pictures["seen_in_training"]
    q_pictures, q_signals = pictures["ecgqa"], signals["ecgqa"]
    lines = [
        "# ECGBench-style suite on ECG pictures, beside PULSE-7B",
        "",
        "Written by `benchmarks/ecgbench_images.py` from `benchmarks/results/ecgbench_images.json`; PULSE-7B's "
        "figures are read from `benchmarks/references/pulse_ecgbench.json` (" + reference["source"] + ").",
        "",
        f"Model: `{result['model_name']}`{' (shipped from ' + result['shipped_from'] + ')' if result.get('shipped_from') else ''}. Every recording is shown to it as a paper render "
        "with print/photo distortions (3x4 + rhythm strip, drawn per recording by its name and the seed) and read "
        "through its image encoder; the same suite on the signals is given for comparison.",
        "",
        f"Splits: PTB-XL fold 10 ∩ ECG-QA test ({seen.get('records_evaluated')} records; seen by any training stage "
        f"of the checkpoint: {seen.get('records_seen_in_training')}). CPSC 2018 and CODE-15% are the small samples "
        "in `../shared/data/external`, from other hospitals and machines (500 Hz and 400 Hz), never trained on. ECG-QA: generated questions over ECG-QA test ECGs "
        f"({q_pictures['seen_in_training'].get('records_evaluated')} records, "
        f"{q_pictures['seen_in_training'].get('records_seen_in_training')} seen in training).",
        "",
        *([note, ""] if (note := stale_default_note(result)) else []),
        "## Multi-label detection (percent)",
        "",
        "| set | ours: size | pictures: AUC from P(yes) | pictures: 0/1 AUC (PULSE's way) | pictures: F1 | "
        "pictures: HL | signals: AUC from P(yes) | signals: 0/1 AUC | PULSE-7B: size | PULSE-7B: AUC (0/1) | "
        "PULSE-7B: F1 | PULSE-7B: HL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Questions (percent)",
        "",
        "| task | pictures | signals | PULSE-7B |",
        "|---|---|---|---|",
        f"| ECG-QA: ours exact match on {q_pictures['n']} generated test questions (95 % CI); PULSE-7B accuracy on "
        f"{sets['ecgqa']['n']} close-ended items | {percent(q_pictures['em'])} ({percent(q_pictures['ci95'][0])}–"
        f"{percent(q_pictures['ci95'][1])}) | {percent(q_signals['em'])} | {sets['ecgqa']['accuracy']} |",
        f"| multiple choice, 4 options ({pictures['multiple_choice']['questions']} questions; chance 25; answers "
        "that name no option count wrong) | "
        f"{percent(pictures['multiple_choice']['accuracy'])} ({pictures['multiple_choice']['unparseable']} name no "
        f"option) | {percent(signals['multiple_choice']['accuracy'])} ({signals['multiple_choice']['unparseable']} "
        "name no option) | – |",
        f"| report: label F1 (micro) of the statements named in a generated report | "
        f"{percent(pictures['report_generation']['label_f1_micro'])} "
        f"({pictures['report_generation']['reports_without_any_statement']} of "
        f"{pictures['report_generation']['records']} name none) | "
        f"{percent(signals['report_generation']['label_f1_micro'])} | – (PULSE scores reports with a GPT-4o judge) |",
        "",
        "The shipped model was trained on ECG-QA questions only: it has not learned to answer with an option letter or "
        "to write a report, and these two rows measure exactly that (ECGInstruct-style training data is built by "
        "`ecgllm data generate instruct`; no shipped stage trains on it yet).",
        "",
        "## Protocol differences (read before comparing)",
        "",
        "- **AUC.** PULSE's \"AUC\" is " + reference["protocol"]["auc"] + ". Ours ranks P(yes) at the first answer "
        "token; the column \"0/1 AUC\" computes PULSE's quantity from our yes/no answers.",
        "- **Pictures.** " + reference["protocol"]["images"] + "; ours come from `ecgllm.render` with its own "
        "distortions.",
        "- **Test sets and sizes.** PULSE-7B's sets are larger (PTB-XL superclasses "
        f"{sets['ptbxl_super']['n']}, CODE-15% {sets['code15']['n']}, CPSC 2018 {sets['cpsc2018']['n']} items) and "
        "drawn from its own splits; PULSE trained on PTB-XL and CODE-15% (in-domain for it). Ours are PTB-XL fold "
        "10 ∩ ECG-QA test and the small zero-shot samples in `../shared`: with a handful of recordings their "
        "intervals are wide, and classes with no positive recording are left out of the AUC.",
        "- **Labels.** PULSE adds NORM (CPSC 2018) and NORM/ABNORMAL (CODE-15%) to the conditions; ours asks one "
        "yes/no question per condition: " + ", ".join(sorted(pictures.get("zero_shot_cpsc2018", {})
                                                             .get("per_class_auc", {}))) + " (CPSC 2018, those "
        "with a positive recording) and " + ", ".join(sorted(pictures.get("zero_shot_code15", {})
                                                             .get("per_class_auc", {}))) + " (CODE-15%).",
        "- **ECG-QA.** " + reference["protocol"]["ecgqa"] + ". Ours is exact match on open generated questions of "
        "every type, options not listed unless the template names them.",
        "",
        f"Command: `{command}`",
        "",
    ]
    DOC.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "src/ecgllm/data/checkpoint"),
                        help="checkpoint with an image encoder (default: the shipped one)")
    parser.add_argument("--signals", help="prepared PTB-XL cache (`ecgllm data prepare`; required unless --page-only)")
    parser.add_argument("--ptbxl", default=str(SHARED / "ptbxl"), help="PTB-XL labels folder")
    parser.add_argument("--external", default=str(SHARED / "external"), help="folder with cpsc2018/ and code15/")
    parser.add_argument("--generated-test", help="generated ECG-QA file over ECG-QA test ECGs (required unless "
                        "--page-only)")
    parser.add_argument("--records", type=int, default=200, help="PTB-XL fold 10 ∩ ECG-QA test records")
    parser.add_argument("--limit", type=int, default=150, help="ECG-QA sample ids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="runs/ecgbench_images", help="folder for the evaluation runs")
    parser.add_argument("--page-only", action="store_true",
                        help="write the page again from benchmarks/results/ecgbench_images.json (nothing is run)")
    args = parser.parse_args()
    if args.page_only:
        saved = json.loads((ROOT / "benchmarks/results/ecgbench_images.json").read_text())
        write_doc(saved, saved["pulse_7b"], saved["command"])
        print(f"wrote {DOC}")
        return
    missing = [f"--{name.replace('_', '-')}" for name in ("signals", "generated_test") if not getattr(args, name)]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --page-only)")
    if not Path(args.generated_test).is_file():  # before the renders and the model load, not after them
        parser.error(f"--generated-test {args.generated_test}: no such file")
    command = "python benchmarks/ecgbench_images.py " + " ".join(
        f"--{k.replace('_', '-')} {shown_path(v)}" for k, v in vars(args).items() if k != "page_only")
    reference = json.loads(REFERENCE.read_text())
    result = run_suite(args)
    config = json.loads((Path(args.model) / "config.json").read_text())
    result["model_name"] = config.get("name") or Path(args.model).name
    result["shipped_from"] = config.get("shipped_from")
    result["pulse_7b"] = reference
    write_result("ecgbench_images.json", {**result, "command": command, "environment": environment()})
    write_doc(result, reference, command)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
