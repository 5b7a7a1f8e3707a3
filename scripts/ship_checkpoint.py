"""Copy a trained checkpoint into the package as the default one (src/ecgllm/data/checkpoint/).

Only what inference needs is copied (config, encoder, projector, label tokens, LoRA adapter, processor,
labels; with --image-encoder, a distilled image encoder so that the checkpoint also reads ECG images);
machine-local paths are dropped from the config; the weights must stay within the size budget on top of the
SmolLM2 base, and the copy must load and answer before it replaces the shipped one.

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
TARGET = ROOT / "src/ecgllm/data/checkpoint"
# a shipped copy keeps its image encoder (and that encoder's page check) unless replaced
KEEP = ("config.json", "encoder.safetensors", "projector.safetensors", "label_tokens.safetensors",
        "labels.json", "processor_config.json", "adapter", "tokenizer", "training_records.json",
        "image_encoder.safetensors", "image_encoder.json", "page_check.safetensors", "card.json")


def attach_image_encoder(checkpoint: Path, run: Path) -> None:
    """Load the staged checkpoint, attach the image encoder (checks the token space) and write both back."""
    from ecgllm.models.ecg_lm import EcgLanguageModel

    model, processor = EcgLanguageModel.from_pretrained(checkpoint)
    model.attach_image_encoder(run, processor)
    shutil.copy2(run / "image_encoder.safetensors", checkpoint / "image_encoder.safetensors")
    (checkpoint / "page_check.safetensors").unlink(missing_ok=True)  # another encoder's check would mislead
    if (run / "page_check.safetensors").exists():
        shutil.copy2(run / "page_check.safetensors", checkpoint / "page_check.safetensors")
    else:
        print(f"warning: {run} has no page check: pictures will be answered without one "
              f"(fit it: python scripts/fit_page_check.py {run} --signals ... --ptbxl ...)", file=sys.stderr)
    saved = json.loads((run / "image_encoder.json").read_text())

    def local(value):  # paths of the training machine shrink to their last part
        return Path(value).name if isinstance(value, str) and "/" in value else value

    saved = {k: ({kk: local(vv) for kk, vv in v.items()} if isinstance(v, dict) and k != "config" else local(v))
             for k, v in saved.items()}
    (checkpoint / "image_encoder.json").write_text(json.dumps(saved, indent=2) + "\n")
    processor.save_pretrained(checkpoint)


def stage_card(staged: Path, source: Path, shipped_from: str) -> None:
    """The shipped copy's card: the source's own, or for a folder from before cards one made from its files and its
    run's recipe; it names the run it was shipped from and hashes the copy's own training records."""
    from ecgllm.models.card import card_of_model_folder, file_sha256, read_card, write_card

    card = read_card(source) or card_of_model_folder(source)

    def local(value):  # an absolute path of the training machine shrinks to its last part
        if isinstance(value, dict):
            return {k: local(v) for k, v in value.items()}
        if isinstance(value, list):
            return [local(v) for v in value]
        return Path(value).name if isinstance(value, str) and value.startswith("/") else value

    card.provenance.recipe = local(card.provenance.recipe)
    card.provenance.shipped_from = shipped_from
    records = staged / "training_records.json"
    card.provenance.training_records_sha256 = file_sha256(records) if records.exists() else None
    write_card(staged, card)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a checkpoint folder written by `ecgllm train` (…/final)")
    parser.add_argument("--max-mb", type=float, default=40.0, help="weights budget on top of the base LLM")
    parser.add_argument("--image-encoder", type=Path, help="an image-distillation run to attach (reads ECG images)")
    args = parser.parse_args()
    meta = json.loads((args.source / "config.json").read_text())
    if meta["config"].get("llm_policy") == "full" or meta["config"].get("llm"):
        print("error: only LoRA/frozen checkpoints on the embedded SmolLM2 base can be shipped", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=TARGET.parent) as tmp:
        staged = Path(tmp) / "checkpoint"
        staged.mkdir()
        for name in KEEP:
            src = args.source / name
            if src.is_dir():
                shutil.copytree(src, staged / name)
            elif src.exists():
                shutil.copy2(src, staged / name)
        (staged / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template
        adapter_config = staged / "adapter" / "adapter_config.json"
        if adapter_config.exists():  # the base is passed in at load time; do not ship the training machine's path
            adapter = json.loads(adapter_config.read_text())
            adapter["base_model_name_or_path"] = None
            adapter_config.write_text(json.dumps(adapter, indent=2) + "\n")
        meta["config"]["encoder_init"] = None  # a path on the training machine; the weights are in the folder
        meta["config"]["image_encoder_init"] = None
        # a copy of a shipped folder (a new image encoder on the same model) keeps the run it came from
        shipped_again = meta.get("name") == "ecgllm-default"
        meta["shipped_from"] = (meta.get("shipped_from") if shipped_again else meta.get("name")) or args.source.name
        meta["name"] = "ecgllm-default"  # what servers call the default, whichever run it came from
        (staged / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        if args.image_encoder:
            attach_image_encoder(staged, args.image_encoder)
            from ecgllm.datasets.split_policy import write_training_records

            # what the image encoder was distilled on belongs to what the shipped checkpoint has seen
            write_training_records(staged, None, inherited=[args.source, args.image_encoder])
        stage_card(staged, args.source, meta["shipped_from"])
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
