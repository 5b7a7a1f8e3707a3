"""Noise questions about pictures, with and without the image quality head: does the head earn its place?

Chosen on ECG-QA *valid* only (no test ECG, none seen by any stage): the noise questions (attribute type "noise":
"Does this ECG show baseline drift in lead V3?", "Which noise does this ECG show?", ...) of two generated draws
over ECG-QA valid ECGs, drawn as ECG-QA drew them (`benchmarks/ecgqa_candidate.py: grouped_valid_set`, seeds 23 and
29). One model answers them three ways: from the signal; from a distorted render with its image quality head
(`ecgllm.models.image_quality`); from the same render with the head taken away (a picture's noise slots blank, as
before the head existed).

    python benchmarks/image_noise_valid.py --model src/ecgllm/data/checkpoint --signals ../cache/cache/ptbxl100 \
        --work ../cache/image_noise_valid        -> benchmarks/results/image_noise_valid.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import SHARED, claim_run_folder, environment, write_result
from ecgqa_candidate import grouped_valid_set

SEEDS = (23, 29)


def noise_questions(work: Path) -> Path:
    """The noise questions of the draws, renumbered (each draw numbers its own samples from 0)."""
    target = work / "sets" / f"valid_noise_s{'-'.join(map(str, SEEDS))}" / "template" / "valid.json"
    if not target.exists():
        rows = [q for seed in SEEDS for q in json.loads(grouped_valid_set(work, seed=seed).read_text())
                if q["attribute_type"] == "noise"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps([{**q, "sample_id": i} for i, q in enumerate(rows)]))
    return target.parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model folder with an image quality head")
    parser.add_argument("--signals", required=True, help="prepared PTB-XL cache (`ecgllm data prepare`)")
    parser.add_argument("--work", type=Path, required=True, help="question files and run folders (resumable)")
    args = parser.parse_args()
    from ecgllm.datasets.split_policy import seen_by_checkpoint
    from ecgllm.evaluation.ecgqa_eval import EcgqaRun, evaluate_ecgqa
    from ecgllm.models.default import load_checkpoint

    measured = claim_run_folder(args.work, args.model)
    model, processor, _ = load_checkpoint(str(args.model), "cpu", "float32")
    head = model.image_quality
    if head is None:
        raise SystemExit(f"{args.model} has no image quality head (scripts/fit_image_quality.py fits one)")
    data = noise_questions(args.work)
    seen = seen_by_checkpoint(args.model, sorted({int(q["ecg_id"][0]) for q in
                                                  json.loads((data / "template" / "valid.json").read_text())}))
    if seen["records_seen_in_training"] is None or seen["records_seen_in_training"]:
        raise SystemExit(f"{args.model}: {seen['records_seen_in_training']} of these valid ECGs were seen in training "
                         "(or its stages do not record what they saw)")
    answers = {}
    ways = (("signal", "signal", True, "signal"), ("picture, image quality head", "image-augmented", True, "picture"),
            ("picture, no head (noise slots blank)", "image-augmented", False, "picture_blank"))
    for name, modality, with_head, folder in ways:
        model.set_image_quality(head if with_head else None)
        run = EcgqaRun(data=[str(data)], ptbxl=args.signals, out=str(args.work / folder), labels=str(SHARED / "ptbxl"),
                       modality=modality)
        metrics = evaluate_ecgqa(run, model, processor)
        answers[name] = {"em": round(metrics["overall_em"], 3), "ci95": [round(v, 3) for v in metrics["overall_em_ci95"]],
                         "n": metrics["n"], "per_question_type": {k: round(v, 3) for k, v in
                                                                  metrics["per_question_type"].items()}}
    write_result("image_noise_valid.json", {
        "split": "ECG-QA valid ECGs (generated noise questions, drawn as ECG-QA drew them, seeds "
                 f"{', '.join(map(str, SEEDS))}); no ECG of them seen in training by any stage",
        "seen_in_training": seen,
        "pictures": "distorted renders (seeded print/photo distortions), one per ECG",
        "answers": answers, "measured_model": measured, "environment": environment()})


if __name__ == "__main__":
    main()
