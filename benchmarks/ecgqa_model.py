"""The trained ECG-QA models, vanilla vs de-biased, through the evaluation harness:

- official ECG-QA valid data we have (template + paraphrased chunk 60000): with ECG, blind, random-ECG;
- a generated test set from fold-10 ECG-QA *test* ECGs (never trained on): the same probes;
- baselines on the same samples (majority per template, question-only, encoder + per-template classifier).

    python benchmarks/ecgqa_model.py --vanilla RUN/instruct_vanilla/final --debiased RUN/instruct_debiased/final \\
        --generated-test runs/ecgqa/data/test_fold10_generated.json --encoder runs/ecgqa/encoder --limit 200
        -> benchmarks/results/ecgqa_model.json (+ run folders under --out)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import SHARED, environment, write_result

from ecgllm.evaluation.baselines import run_baselines
from ecgllm.evaluation.probes import run_probes
from ecgllm.models.default import load_checkpoint

QA = SHARED / "ecgqa/ecgqa/ptbxl"


def per_variant(run_dir: Path, probe: str, variant: str) -> float:
    metrics = json.loads((run_dir / probe / "metrics.json").read_text())
    return metrics.get("per_variant", {}).get(variant, metrics["overall_em"])


def evaluate(model_dir: Path, out: Path, generated: Path | None, limit: int, signals: str) -> dict:
    loaded = load_checkpoint(str(model_dir), "cpu", "float32")[:2]
    official = out / "official_valid"
    labels = str(SHARED / "ptbxl")
    summary = run_probes([str(QA / "template/valid"), str(QA / "paraphrased/valid")], signals,
                         str(official), model=str(model_dir), labels=labels, limit=limit, loaded=loaded)
    result = {"template_em": per_variant(official, "none", "template"),
              "paraphrased_em": per_variant(official, "none", "paraphrased"),
              "random_ecg_em": per_variant(official, "random-ecg", "template"),
              "blind_em": per_variant(official, "blind", "template"),
              "random_ecg_fall_towards_blind": summary["random_ecg_fall_towards_blind"],
              "per_question_type": summary["per_probe_question_type"]["none"]}
    result["paraphrase_gap"] = round(result["template_em"] - result["paraphrased_em"], 4)
    if generated:
        gen = out / "generated_test_fold10"
        g = run_probes([str(generated)], signals, str(gen), model=str(model_dir), labels=labels, limit=limit,
                       loaded=loaded)
        result["generated_fold10"] = {"em": g["with_ecg_em"], "random_ecg_em": g["random_ecg_em"],
                                      "blind_em": g["blind_em"],
                                      "random_ecg_fall_towards_blind": g["random_ecg_fall_towards_blind"],
                                      "per_question_type": g["per_probe_question_type"]["none"],
                                      "per_stratum": g.get("per_probe_stratum", {}).get("none", {})}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vanilla", type=Path, required=True)
    parser.add_argument("--debiased", type=Path, required=True)
    parser.add_argument("--generated-test", type=Path)
    parser.add_argument("--encoder", type=Path, help="encoder run for the classifier baseline")
    parser.add_argument("--limit", type=int, default=200, help="sample ids per data set (each in both variants)")
    parser.add_argument("--out", type=Path, default=Path("runs/ecgqa/eval"))
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=DIR",
                        help="another checkpoint to evaluate the same way (e.g. a later stage), reported under "
                             "other_models")
    parser.add_argument("--signals", default=str(SHARED / "ptbxl"),
                        help="PTB-XL signals: the pack folder (default), an official folder or a prepared cache "
                             "(fastest)")
    args = parser.parse_args()
    result = {"shipped": "debiased", "limit_sample_ids": args.limit, "seeds": 1}
    debiased = evaluate(args.debiased, args.out / "debiased", args.generated_test, args.limit, args.signals)
    result.update({k: v for k, v in debiased.items()})
    result["vanilla"] = evaluate(args.vanilla, args.out / "vanilla", args.generated_test, args.limit, args.signals)
    extras = dict(item.split("=", 1) for item in args.extra)
    result["other_models"] = {name: evaluate(Path(path), args.out / name, args.generated_test, args.limit,
                                             args.signals) for name, path in extras.items()}
    which = ["majority", "question-only"] + (["classifier"] if args.encoder else [])
    train = [str(QA / "template/train")]
    result["baselines_official_valid_template"] = run_baselines(
        train, [str(QA / "template/valid")], args.signals, str(args.out / "baselines_official"),
        encoder=str(args.encoder) if args.encoder else None, which=which, labels=str(SHARED / "ptbxl"),
        limit=args.limit)["per_baseline"]
    if args.generated_test:
        result["baselines_generated_fold10"] = run_baselines(
            train, [str(args.generated_test)], args.signals, str(args.out / "baselines_generated"),
            encoder=str(args.encoder) if args.encoder else None, which=which, labels=str(SHARED / "ptbxl"),
            limit=args.limit)["per_baseline"]
    result["models"] = {"debiased": str(args.debiased), "vanilla": str(args.vanilla), **extras}
    result["environment"] = environment()
    write_result("ecgqa_model.json", result)


if __name__ == "__main__":
    main()
