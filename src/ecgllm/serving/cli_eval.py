"""`ecgllm eval ...`: score predictions, run a model on ECG-QA under probes, baselines, the ECGBench suite."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ecgllm.serving.cli_ask import add_placement_arguments
from ecgllm.serving.exit_codes import EXIT_OK

# ecgllm.evaluation.ecgqa_eval.MODALITIES, for --modality of every eval command (not imported from there: the CLI
# starts without PyTorch; tests/test_cli.py checks the two agree)
MODALITIES = ("signal", "image", "image-augmented")


def cmd_ecgqa_score(args: argparse.Namespace) -> int:
    from ecgllm.evaluation.ecgqa_eval import add_strata
    from ecgllm.evaluation.ecgqa_score import load_gold, read_predictions, score_predictions, summarize
    from ecgllm.evaluation.report import run_info, write_run

    gold = load_gold(args.gold)
    table, extra = score_predictions(gold, read_predictions(args.predictions))
    table = add_strata(table, args.ptbxl_labels)
    metrics = summarize(table, extra, n_boot=args.bootstrap, seed=args.seed)
    info = run_info(str(args.predictions), gold.version, args.seed, {"gold": list(map(str, args.gold))})
    write_run(args.out, metrics, info, "ECG-QA scores", table=table)
    _print_summary(metrics, args.out)
    return EXIT_OK


def _print_summary(metrics: dict, out: str) -> None:
    lo, hi = metrics["overall_em_ci95"]
    print(f"overall EM {metrics['overall_em']:.4f} [{lo:.4f}, {hi:.4f}]  n={metrics['n']}  "
          f"missing={metrics['missing']}  unparseable={metrics['unparseable']}")
    for name, value in metrics.get("per_question_type", {}).items():
        print(f"  {name:32s} {value:.4f}  (n={metrics['per_question_type_n'][name]})")
    if "paraphrase_gap" in metrics:
        print(f"  paraphrase gap (template - paraphrased): {metrics['paraphrase_gap']:+.4f}")
    print(f"wrote {Path(out) / 'metrics.json'} and report.md")


def cmd_ecgqa(args: argparse.Namespace) -> int:
    from ecgllm.evaluation.ecgqa_eval import EcgqaRun, evaluate_ecgqa

    run = EcgqaRun(data=args.data, ptbxl=args.ptbxl, out=args.out, model=args.model, probe=args.probe,
                   labels=args.labels, limit=args.limit, seed=args.seed, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, modality=args.modality, device=args.device, dtype=args.dtype)
    metrics = evaluate_ecgqa(run, progress=not args.quiet)
    _print_summary(metrics, args.out)
    return EXIT_OK


def cmd_probes(args: argparse.Namespace) -> int:
    from ecgllm.evaluation.probes import run_probes

    summary = run_probes(args.data, args.ptbxl, args.out, model=args.model, labels=args.labels, limit=args.limit,
                         seed=args.seed, batch_size=args.batch_size, progress=not args.quiet, device=args.device,
                         dtype=args.dtype)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=2))
    print(f"wrote {Path(args.out) / 'report.md'}")
    return EXIT_OK


def cmd_baselines(args: argparse.Namespace) -> int:
    from ecgllm.evaluation.baselines import run_baselines

    summary = run_baselines(args.train, args.data, args.ptbxl, args.out, encoder=args.encoder, llm=args.llm,
                            which=args.baselines, labels=args.labels, limit=args.limit, seed=args.seed,
                            progress=not args.quiet)
    for name, em in summary["per_baseline"].items():
        lo, hi = summary["per_baseline_ci95"][name]
        print(f"{name:15s} EM {em:.4f} [{lo:.4f}, {hi:.4f}]")
    print(f"wrote {Path(args.out) / 'report.md'}")
    return EXIT_OK


def cmd_ecgbench(args: argparse.Namespace) -> int:
    from ecgllm.evaluation.ecgbench import run_ecgbench

    metrics = run_ecgbench(args.out, args.ptbxl, model=args.model, labels=args.labels, records=args.records,
                           external=args.external, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
                           device=args.device, dtype=args.dtype, modality=args.modality)
    for task, values in metrics.items():
        shown = {k: v for k, v in values.items() if not isinstance(v, (dict, list))}
        print(f"{task}: {shown}")
    print(f"wrote {Path(args.out) / 'report.md'}")
    return EXIT_OK


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, metavar="OFFICIAL",
                   help="official-format ECG-QA file(s) or folder(s) (.json or .json.gz; template/ and/or paraphrased/)")
    p.add_argument("--ptbxl", required=True, metavar="DIR",
                   help="PTB-XL signals: the official folder, an `ecgllm data prepare` cache, or the pack folder")
    p.add_argument("--model", metavar="DIR", help="checkpoint folder (default: the shipped checkpoint)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created; a re-run resumes)")
    p.add_argument("--labels", metavar="DIR", help="PTB-XL labels for severity strata and patient ids "
                                                   "(default: --ptbxl when it holds them)")
    p.add_argument("--limit", type=int, help="only the first N sample ids (each in every variant given)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_placement_arguments(p)


def add_eval_commands(sub: argparse._SubParsersAction, formatter: type, exit_help: str) -> None:
    p = sub.add_parser("eval", formatter_class=formatter, help="evaluate: ECG-QA scores, probes, baselines",
                       description="Evaluation harness. Every run writes metrics.json (machine), report.md "
                                   "(human) and plots into one run folder, with the model, data version, seed and "
                                   "command line.",
                       epilog=f"""examples:
  ecgllm eval ecgqa-score preds.jsonl --gold ecgqa/ptbxl/template/valid --out runs/eval/score
  ecgllm eval ecgqa --data ecgqa/ptbxl/template/valid --ptbxl ptb-xl/ --model runs/m/final --out runs/eval/m
  ecgllm eval ecgqa --data valid.json --ptbxl ptb-xl/ --probe random-ecg --out runs/eval/m-random
  ecgllm eval probes --data ecgqa/ptbxl --ptbxl ptb-xl/ --model runs/m/final --out runs/eval/probes

{exit_help}""")
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)

    s = actions.add_parser("ecgqa-score", formatter_class=formatter, help="score a predictions JSONL",
                           description="Score predictions against official ECG-QA data: exact match of answer "
                                       "sets (order, case, punctuation, synonyms ignored) overall, per question "
                                       "type, attribute type, template, variant and severity stratum, with bootstrap "
                                       "95%% CIs. Missing and unparseable answers count as wrong and are reported.",
                           epilog="""predictions: one JSON object per line,
  {"sample_id": 60000, "answer": "yes"}                      or
  {"sample_id": 60001, "answer": ["lead V1", "lead V2"], "variant": "paraphrased"}
("variant" is needed only when the gold holds both template and paraphrased samples)

example:
  ecgllm eval ecgqa-score preds.jsonl --gold ecgqa/ptbxl/paraphrased/valid/60000.json --out runs/score""")
    s.add_argument("predictions", help="JSONL predictions")
    s.add_argument("--gold", nargs="+", required=True, help="official-format file(s) or folder(s)")
    s.add_argument("--out", required=True, metavar="RUN_DIR")
    s.add_argument("--ptbxl-labels", metavar="DIR", help="PTB-XL labels folder: adds EM per severity stratum")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_ecgqa_score)

    s = actions.add_parser("ecgqa", formatter_class=formatter, help="run a model on ECG-QA and score it",
                           description="Answer every sample of official-format ECG-QA data with a model (batched, "
                                       "progress bar, resumable) and score it like `ecgqa-score`. --probe blind "
                                       "removes the ECGs; --probe random-ecg gives each question another patient's "
                                       "ECG from the same data.")
    _add_run_args(s)
    s.add_argument("--probe", choices=["none", "blind", "random-ecg"], default="none")
    s.add_argument("--modality", choices=MODALITIES, default="signal",
                   help="give the model each ECG as its signal (default) or as a paper render, clean or with "
                        "seeded print/photo distortions (needs a checkpoint with an image encoder)")
    s.add_argument("--max-new-tokens", type=int, default=32)
    s.set_defaults(func=cmd_ecgqa)

    s = actions.add_parser("probes", formatter_class=formatter, help="faithfulness probes in one report",
                           description="Run the model with its ECGs, blind and with random ECGs (and on the "
                                       "paraphrased variant when the data has it); report EM per probe, how far "
                                       "random-ECG falls towards blind, the paraphrase gap and EM per severity "
                                       "stratum.")
    _add_run_args(s)
    s.set_defaults(func=cmd_probes)

    s = actions.add_parser("baselines", formatter_class=formatter, help="ECG-QA baselines in one report",
                           description="Baselines scored exactly like a model: the constant answer (\"no\" to "
                                       "yes/no questions, \"none\" to the others; --train unused), majority answer per template "
                                       "(question-only prior), a question-only text classifier, the ECG-QA "
                                       "classifier upper bound (frozen pretrained encoder + one head per template) "
                                       "and the training-free text-tags pipeline (the encoder's labels written into "
                                       "the prompt of the same LLM).",
                           epilog="""example:
  ecgllm eval baselines --train ecgqa/ptbxl/template/train --data ecgqa/ptbxl/template/valid \\
      --ptbxl ptb-xl/ --encoder runs/encoder_ptbxl --out runs/eval/baselines""")
    s.add_argument("--train", nargs="+", required=True, metavar="OFFICIAL", help="official-format training samples")
    s.add_argument("--data", nargs="+", required=True, metavar="OFFICIAL", help="official-format samples to answer")
    s.add_argument("--ptbxl", required=True, metavar="DIR", help="PTB-XL signals (official folder, cache or pack)")
    s.add_argument("--encoder", metavar="RUN", help="finished encoder run (classifier and text-tags baselines)")
    s.add_argument("--llm", metavar="DIR", help="LLM for text-tags (default: the embedded SmolLM2)")
    s.add_argument("--baselines", nargs="+", default=["majority", "question-only"],
                   choices=["constant", "majority", "question-only", "classifier", "text-tags"])  # baselines.BASELINES
    s.add_argument("--out", required=True, metavar="RUN_DIR")
    s.add_argument("--labels", metavar="DIR", help="PTB-XL labels (strata, statement names)")
    s.add_argument("--limit", type=int, help="only the first N samples")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_baselines)

    s = actions.add_parser("ecgbench", formatter_class=formatter, help="ECGBench-style suite on PTB-XL + zero-shot sets",
                           description="Superclass abnormality detection on PTB-XL fold 10 (macro AUC from answer "
                                       "scores; the 0/1 'AUC' of the anchors labelled separately; macro F1; Hamming "
                                       "loss), report generation (label F1 of extracted statements, BLEU, ROUGE-L), "
                                       "multiple choice, and zero-shot CPSC 2018 / CODE-15%% samples with Wilson "
                                       "intervals.",
                           epilog="""example:
  ecgllm eval ecgbench --ptbxl shared/data/ptbxl --model runs/m/final --external shared/data/external \\
      --records 200 --out runs/eval/ecgbench
  ecgllm eval ecgbench --ptbxl shared/data/ptbxl --external shared/data/external --modality image-augmented \\
      --out runs/eval/ecgbench_pictures       # the same suite on distorted paper renders""")
    s.add_argument("--ptbxl", required=True, metavar="DIR", help="PTB-XL signals (official folder, cache or pack)")
    s.add_argument("--model", metavar="DIR", help="checkpoint folder (default: the shipped checkpoint)")
    s.add_argument("--labels", metavar="DIR", help="PTB-XL labels (default: --ptbxl when it holds them)")
    s.add_argument("--external", metavar="DIR", help="folder with cpsc2018/ and code15/ samples (zero-shot sets)")
    s.add_argument("--records", type=int, default=200, help="fold-10 records to ask about (seeded sample)")
    s.add_argument("--modality", choices=MODALITIES, default="signal",
                   help="ask about each recording as its signal, or as a paper render of it, clean or with "
                        "print/photo distortions (needs a checkpoint with an image encoder)")
    s.add_argument("--out", required=True, metavar="RUN_DIR")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--quiet", action="store_true")
    add_placement_arguments(s)
    s.set_defaults(func=cmd_ecgbench)
