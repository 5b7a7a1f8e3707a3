"""Refit a checkpoint's label head on the pooled tokens of whole windows, as its language model reads them
(`ecgllm.training.label_head`): the encoder, projector, adapter and image encoder stay as they are.

    python scripts/fit_label_head.py src/ecgllm/data/checkpoint --signals ../cache/cache/ptbxl100 \
        --ptbxl ../shared/data/ptbxl --out ../cache/runs/ecgqa/label_head_refit \
        --report benchmarks/results/label_head_fit.json
    -> OUT: a model folder (a candidate for benchmarks/ecgqa_candidate.py), with OUT/label_head_fit.json (and a
       copy at --report)

Fitted on PTB-XL folds 1-8 outside every ECG-QA valid/test patient, stopped on fold 9 records of ECG-QA train
patients; the report gives both macro AUCs on those before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model folder (e.g. src/ecgllm/data/checkpoint)")
    parser.add_argument("--signals", required=True, help="prepared PTB-XL cache (`ecgllm data prepare ptbxl`)")
    parser.add_argument("--ptbxl", required=True, help="PTB-XL labels folder")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the refitted model")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="also write the fit's report (AUCs before and after) here")
    args = parser.parse_args()
    from ecgllm.errors import InputError
    from ecgllm.training.label_head import refit_label_head

    try:
        report = refit_label_head(args.model, args.signals, args.ptbxl, args.out, args.epochs, args.lr,
                                  args.weight_decay, args.seed)
    except (InputError, ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    if args.report:
        command = " ".join(["python", "scripts/fit_label_head.py", *sys.argv[1:]])
        args.report.write_text(json.dumps({"command": command, **report}, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("kept_epoch", "before", "after", "fit_records", "stop_records")}))


if __name__ == "__main__":
    main()
