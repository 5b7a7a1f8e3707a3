"""Fit a model folder's image quality head: a picture's noise, read as the model's signal-quality heads read the
signal (`ecgllm.models.image_quality`; fitting: `ecgllm.training.image_quality`). Without it, a question that names a
noise gets a blank slot for a picture; with it, the slot the language model learned to read.

    python scripts/fit_image_quality.py src/ecgllm/data/checkpoint --signals cache/ptbxl100 \
        --ptbxl ../shared/data/ptbxl --report benchmarks/results/image_quality_fit.json
        -> MODEL/image_quality.safetensors, and the report: the records it was fitted on (PTB-XL folds 1-8, no
           ECG-QA valid or test patient) and a held-out check beside the signal heads (fold-9 records of ECG-QA
           valid patients, the model-selection split, which no stage trains on)

Renders of 3,000 training records take about 3 minutes on one core, their descriptors 2 more. Run it again after
shipping a new image encoder or new signal-quality heads: the head belongs to that pair.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model folder with an image encoder and signal-quality heads")
    parser.add_argument("--signals", required=True, help="prepared PTB-XL cache (`ecgllm data prepare`)")
    parser.add_argument("--ptbxl", required=True, help="PTB-XL labels folder (noise columns, folds)")
    parser.add_argument("--n-train", type=int, default=3000, help="training records rendered (one page each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--report", type=Path, help="write the fit's report (JSON) here too")
    args = parser.parse_args()
    from ecgllm.datasets.split_policy import read_training_records, trained_records
    from ecgllm.errors import InputError
    from ecgllm.models.ecg_lm import EcgLanguageModel
    from ecgllm.models.encoder_source import encoder_meta
    from ecgllm.training.image_quality import fit_image_quality

    trained = trained_records(read_training_records(args.model))
    try:
        model = EcgLanguageModel.from_pretrained(args.model)
        head, report = fit_image_quality(model, args.signals, args.ptbxl, encoder_meta(args.model)["input"]["normalize"],
                                         n_train=args.n_train, seed=args.seed, workers=args.workers, trained=trained)
    except (InputError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"fit_image_quality: {exc}")
    head.save(args.model)
    text = json.dumps({"model": str(args.model), **report}, indent=2) + "\n"
    if args.report:
        args.report.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
