"""Copy a trained checkpoint into the package as the default one (src/ecgllm/data/checkpoint/).

The checkpoint is loaded (either folder layout, `ecgllm.models.model_folder`) and written anew by
``save_pretrained``, so the shipped copy holds what inference needs in transformers' layout (config.json,
model.safetensors with the encoder, projector, label tokens, LoRA adapter and image encoder, the processor) plus
the training records and the card; with --image-encoder, a distilled image encoder is attached first, so that the
checkpoint also reads ECG images (an image quality head of the source, fitted for its own image encoder, is then
dropped: fit one for the new pair with scripts/fit_image_quality.py). Machine-local paths are dropped from the
config; the weights must stay within the size budget on top of the SmolLM2 base, and the copy must load and answer
before it replaces the shipped one.

    python scripts/ship_checkpoint.py runs/ecgqa/instruct_debiased/final [--image-encoder runs/ecgqa/image_encoder]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import fingerprint  # noqa: E402  (what results pages record of the model they measured)

TARGET = ROOT / "src/ecgllm/data/checkpoint"


def attach_image_encoder(model, processor, run: Path) -> None:
    """Attach the distilled image encoder of ``run`` (checks the token space), with its page check, its
    description's machine-local paths shrunk to their last part."""
    from ecgllm.training.model_setup import attach_image_encoder as attach

    attach(model, run, processor)
    if model.page_check is None:
        print(f"warning: {run} has no page check: pictures will be answered without one "
              f"(fit it: python scripts/fit_page_check.py {run} --signals ... --ptbxl ...)", file=sys.stderr)

    saved = model.config.image_encoder
    model.config.image_encoder = {k: v if k == "config" else machine_local(v) for k, v in saved.items()}


def machine_local(value, absolute_only: bool = False):
    """Paths of the training machine shrunk to their last part, in recipes and lineages as well (with
    ``absolute_only``, only absolute ones: a card's recipe keeps the relative paths a reader can follow)."""
    if isinstance(value, dict):
        return {k: machine_local(v, absolute_only) for k, v in value.items()}
    if isinstance(value, list):
        return [machine_local(v, absolute_only) for v in value]
    is_path = isinstance(value, str) and (value.startswith("/") if absolute_only else "/" in value)
    return Path(value).name if is_path else value


def selection_metrics(result: Path, source: Path) -> dict:
    """The headline figures of the model-selection run that chose ``source`` (`benchmarks/ecgqa_candidate.py`'s
    JSON, on ECG-QA valid), for its card; the result must have scored these very weights as its candidate."""
    scored = json.loads(result.read_text())
    # the selection answered signals only: models whose picture path alone changed since (an image quality head
    # fitted) are the ones it weighed; a result from before signal fingerprints were recorded is held to the whole
    signals_only = "signal_fingerprints" in scored
    named = scored["signal_fingerprints" if signals_only else "fingerprints"]
    weights = fingerprint(source, signals_only=signals_only)
    if named["candidate"] != weights:
        raise SystemExit(f"error: {result} scored other weights ({named['candidate']}) than {source} ({weights})")
    if not scored["decision"]["replace"]:
        raise SystemExit(f"error: by {result}, {source} does not replace the default")
    weighed = named["default"]
    today = fingerprint(TARGET, signals_only=signals_only) if TARGET.exists() else None
    if today is not None and weighed != today:
        raise SystemExit(f"error: {result} weighed {source} against another default ({weighed}) than today's ({today})")
    metrics = {"selected_by": result.name, "split": "ECG-QA valid (model selection; no ECG of it seen in training)"}
    for name in ("official_valid", "valid_grouped"):
        for key in ("n", "em", "em_random_ecg", "drop_random_ecg"):
            metrics[f"{name}_{key}"] = scored["candidate"][name][key]
    return metrics


def evidence_metrics(result: Path, source: Path) -> dict:
    """The headline figures of `benchmarks/ecgqa_evidence.py`'s result for ``source`` (the generated test set over
    ECG-QA test ECGs, which no stage trained on, and the balanced "Is this a normal ECG?" check), for its card; the
    result must have measured these very weights."""
    measured = json.loads(result.read_text())
    # the evidence answered signals only: the weights that answer a signal must be these
    model = measured.get("measured_model", {})
    signals_only = "signal_fingerprint" in model  # else (an earlier result) held to the whole model
    named = model.get("signal_fingerprint" if signals_only else "fingerprint")
    weights = fingerprint(source, signals_only=signals_only)
    if named != weights:
        raise SystemExit(f"error: {result} measured other weights ({named}) than {source} ({weights})")
    test = measured["generated_test"]
    return {"measured_by": result.name, "generated_test_split": test["split"], "generated_test_n": test["n"],
            "generated_test_records_seen_in_training": test["seen_in_training"]["records_seen_in_training"],
            **{f"generated_test_{key}": test[key] for key in ("em", "blind_em", "random_ecg_em",
                                                               "single_verify_balanced_acc")},
            "normal_ecg_balanced_acc": measured["normal_ecg"]["balanced_acc"]}


def stage_card(staged: Path, source: Path, shipped_from: str, metrics: dict | None = None) -> None:
    """The shipped copy's card: the source's own, or for a folder from before cards one made from its files and its
    run's recipe; it names the run it was shipped from, hashes the copy's own training records, and carries the
    figures that chose it (``metrics``), where given."""
    from ecgllm.models.card import card_of_model_folder, file_sha256, read_card, write_card

    card = read_card(source) or card_of_model_folder(source)

    card.provenance.recipe = machine_local(card.provenance.recipe, absolute_only=True)
    card.provenance.shipped_from = shipped_from
    records = staged / "training_records.json"
    card.provenance.training_records_sha256 = file_sha256(records) if records.exists() else None
    if metrics:
        card.metrics = {**card.metrics, **metrics}
    write_card(staged, card)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a checkpoint folder written by `ecgllm train` (…/final)")
    parser.add_argument("--max-mb", type=float, default=40.0, help="weights budget on top of the base LLM")
    parser.add_argument("--image-encoder", type=Path, help="an image-distillation run to attach (reads ECG images)")
    parser.add_argument("--selected-by", type=Path, help="the benchmarks/ecgqa_candidate.py result (JSON) that chose "
                        "this model on ECG-QA valid: its headline figures go into the card")
    parser.add_argument("--measured-by", type=Path, help="a benchmarks/ecgqa_evidence.py result (JSON) of these "
                        "weights: its headline figures on ECG-QA test ECGs go into the card")
    args = parser.parse_args()
    metrics = {**(selection_metrics(args.selected_by, args.source) if args.selected_by else {}),
               **(evidence_metrics(args.measured_by, args.source) if args.measured_by else {})}
    from ecgllm.models.ecg_lm import EcgLanguageModel
    from ecgllm.models.model_folder import read_config
    from ecgllm.models.processor import EcgProcessor

    parts = read_config(args.source).parts()
    if parts.llm_policy == "full" or parts.llm:
        print("error: only LoRA/frozen checkpoints on the embedded SmolLM2 base can be shipped", file=sys.stderr)
        return 2
    model = EcgLanguageModel.from_pretrained(args.source)
    processor = EcgProcessor.from_pretrained(args.source)
    if args.image_encoder:
        attach_image_encoder(model, processor, args.image_encoder)
    model.ecg_config.encoder_init = None  # a path on the training machine; the weights are in the folder
    model.ecg_config.image_encoder_init = None
    # a copy of a shipped folder (a new image encoder on the same model) keeps the run it came from
    shipped_again = model.config.name == "ecgllm-default"
    model.config.shipped_from = (model.config.shipped_from if shipped_again else model.config.name) or args.source.name
    with tempfile.TemporaryDirectory(dir=TARGET.parent) as tmp:
        staged = Path(tmp) / "checkpoint"
        model.save_pretrained(staged, processor, name="ecgllm-default")  # what servers call the default
        if (args.source / "training_records.json").exists():
            shutil.copy2(args.source / "training_records.json", staged / "training_records.json")
        if args.image_encoder:
            from ecgllm.datasets.split_policy import write_training_records

            # what the image encoder was distilled on belongs to what the shipped checkpoint has seen
            write_training_records(staged, None, inherited=[args.source, args.image_encoder])
        stage_card(staged, args.source, model.config.shipped_from, metrics)
        if model.image_encoder is not None and model.image_quality is None and model.label_tokens is not None \
                and model.label_tokens.quality is not None:
            print(f"warning: no image quality head: pictures' noise slots stay blank (fit one: python "
                  f"scripts/fit_image_quality.py {TARGET.relative_to(ROOT)} --signals ... --ptbxl ...)", file=sys.stderr)
        weights = sum(p.stat().st_size for p in staged.rglob("*.safetensors"))
        total = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())
        if weights > args.max_mb * 2**20:
            print(f"error: {weights / 2**20:.1f} MB of weights > {args.max_mb} MB", file=sys.stderr)
            return 2
        from ecgllm.serving.assistant import ECGAssistant

        answer = ECGAssistant.load(staged).ask(ROOT / "src/ecgllm/data/ptbxl_00001_lr.hea",
                                               "Does this ECG show atrial fibrillation?", max_new_tokens=8)
        shutil.rmtree(TARGET, ignore_errors=True)
        staged.rename(TARGET)
    print(f"shipped {args.source} -> {TARGET}: {weights / 2**20:.1f} MB weights, {total / 2**20:.1f} MB in all; "
          f"smoke answer: {answer.text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
