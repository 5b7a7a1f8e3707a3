"""What a checkpoint's label tokens can tell the LLM, measured on one ECG-QA split's ECGs (default: valid).

- classifier: AUC of the frozen classifier head's probability for each PTB-XL statement (macro over statements
  with at least 10 positive and 10 negative ECGs in the split), the number the named-label slots carry;
- signal quality (checkpoints with ``signal_quality``): AUC of each noise kind, per record ("Does this ECG show
  static noise?") and per lead ("... in lead V3?"), against PTB-XL's noise columns read as ECG-QA reads them.

ECGs of ECG-QA valid/test patients were never trained on by any stage (the split policy refuses them), so these
are held-out numbers; the script checks the checkpoint's training records against the split and says so.

    python benchmarks/signal_reading.py --model CHECKPOINT --ecg-cache cache/ptbxl100 \\
        --ptbxl ../shared/data/ptbxl --ecgqa ../shared/data/ecgqa/ecgqa --split valid --name NAME
    -> benchmarks/results/signal_reading_NAME.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import environment, write_result
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

MIN_CLASS = 10  # positives and negatives a statement needs in the split to get an AUC


def _auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    if truth.sum() < MIN_CLASS or (~truth).sum() < MIN_CLASS:
        return None
    return round(float(roc_auc_score(truth, score)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (with label tokens)")
    parser.add_argument("--ecg-cache", required=True, help="`ecgllm data prepare ptbxl` folder")
    parser.add_argument("--ptbxl", required=True, help="PTB-XL metadata folder (ptbxl_database.csv)")
    parser.add_argument("--ecgqa", required=True, help="ECG-QA folder with the official split files")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--name", required=True, help="result name: benchmarks/results/signal_reading_NAME.json")
    args = parser.parse_args()

    from ecgllm.datasets.cache import ECGCache
    from ecgllm.datasets.ecgqa import ECGQA
    from ecgllm.datasets.ecgqa_attributes import noise_leads_table
    from ecgllm.datasets.ptbxl import PTBXL
    from ecgllm.datasets.split_policy import seen_by_checkpoint
    from ecgllm.models.default import load_checkpoint
    from ecgllm.models.signal_quality import QUALITY_KINDS

    model, processor, _ = load_checkpoint(args.model, "cpu", "float32")
    model.eval()
    if model.label_tokens is None:
        raise SystemExit(f"{args.model}: this checkpoint has no label tokens (nothing to measure)")
    ptbxl = PTBXL.load(args.ptbxl)
    split_ids = sorted(ECGQA(args.ecgqa).split_ecg_ids(args.split))
    cache = ECGCache.open(args.ecg_cache)
    ids = [i for i in split_ids if i in ptbxl.table.index and bool(ptbxl.table.at[i, "has_official_metadata"])]
    probabilities, quality = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(ids), 64), desc="reading ECGs", unit="batch"):
            batch = ids[start:start + 64]
            signal, mask = processor.prepare_ecgs(cache.ecgs(batch))
            pooled = model.encoder.pool(model.encoder(signal, mask))
            probabilities.append(torch.sigmoid(model.label_tokens.head(pooled)).numpy())
            if model.label_tokens.quality is not None:
                quality.append(model.label_tokens.quality(signal, mask).numpy())
    probabilities = np.concatenate(probabilities)

    codes = model.label_vocab.get("all71", [])
    per_statement = {}
    for column, code in enumerate(codes):
        truth = np.array([code in ptbxl.table.at[i, "scp_codes"] for i in ids])
        auc = _auc(truth, probabilities[:, column])
        if auc is not None:
            per_statement[code] = auc
    result = {"model": str(args.model), "split": f"ECG-QA {args.split}", "ecgs": len(ids),
              "seen_in_training": seen_by_checkpoint(args.model, ids),
              "classifier": {"macro_auc": round(float(np.mean(list(per_statement.values()))), 4),
                             "statements_scored": len(per_statement), "per_statement": per_statement}}
    if quality:
        leads = model.label_tokens.quality.leads
        table = np.concatenate(quality).reshape(len(ids), len(QUALITY_KINDS), 1 + len(leads))
        noise = noise_leads_table(ptbxl.table, ids, leads)
        noise = np.concatenate([noise, noise.any(-1, keepdims=True)], axis=-1)  # [E, leads, kinds]
        result["signal_quality"] = {
            kind: {"records_with_it": int(noise[:, :, k].any(1).sum()),
                   "record_auc": _auc(noise[:, :, k].any(1), table[:, k, 0]),
                   "lead_auc": _auc(noise[:, :, k].reshape(-1), table[:, k, 1:].reshape(-1))}
            for k, kind in enumerate(QUALITY_KINDS)}
    result["environment"] = environment()
    write_result(f"signal_reading_{args.name}.json", result)


if __name__ == "__main__":
    main()
