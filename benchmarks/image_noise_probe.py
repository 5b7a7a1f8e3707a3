"""Can a picture of an ECG tell its noise? A linear probe of the image encoder's tokens against PTB-XL's noise labels.

    python benchmarks/image_noise_probe.py --model src/ecgllm/data/checkpoint --signals ../cache/cache/ptbxl100
    -> benchmarks/results/image_noise_probe.json

ECG-QA asks about baseline drift, static and burst noise, electrode problems and "any kind of noises". For a signal
the signal-quality heads answer from the spectrum (`ecgllm.models.signal_quality`); a picture leaves their slots
blank. Before building an image head for those slots, this measures whether the image encoder's tokens carry the
information: records of ECG-QA train patients with official PTB-XL metadata, half with a noise, are rendered
(half distorted, seeded); a logistic probe on the tokens' mean and maximum (`page_features`) is fitted on renders
of PTB-XL folds 1-8 and scored on renders of fold 9 (AUC against the noise as ECG-QA reads PTB-XL's columns, with
bootstrap intervals), beside the signal-quality heads reading the same fold-9 records' signals. No ECG-QA valid or
test record is used (split policy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import SHARED, environment, write_result
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ecgllm.datasets.ecgqa_attributes import noise_leads_table
from ecgllm.datasets.split_policy import load_policy
from ecgllm.evaluation.stats import bootstrap_metric_ci
from ecgllm.io.leads import STANDARD_12
from ecgllm.models.ecg_lm import EcgLanguageModel
from ecgllm.models.page_check import page_features
from ecgllm.models.signal_quality import QUALITY_KINDS
from ecgllm.training.distill_image import render_set, student_tokens
from ecgllm.training.pretrain_encoder import load_ptbxl_arrays


def balanced_rows(rows: np.ndarray, noisy: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows, half of them with a noise label (as many as there are, if fewer)."""
    with_noise, without = rows[noisy[rows]], rows[~noisy[rows]]
    return np.sort(np.concatenate([rng.permutation(with_noise)[: n // 2], rng.permutation(without)[: n - n // 2]]))


def auc_with_ci(labels: np.ndarray, scores: np.ndarray) -> dict:
    interval = [None if np.isnan(v) else round(v, 3) for v in bootstrap_metric_ci(roc_auc_score, labels, scores)]
    return {"auc": round(float(roc_auc_score(labels, scores)), 3), "ci95": interval}  # None: too few positives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint with an image encoder and signal-quality heads")
    parser.add_argument("--signals", required=True, help="prepared PTB-XL cache (ecgllm data prepare ptbxl)")
    parser.add_argument("--ptbxl", default=str(SHARED / "ptbxl"), help="PTB-XL metadata folder")
    parser.add_argument("--n-train", type=int, default=3000, help="renders of folds 1-8 to fit the probe on")
    parser.add_argument("--n-valid", type=int, default=800, help="renders of fold 9 to score it on")
    parser.add_argument("--workers", type=int, default=2, help="render processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()

    started = time.time()
    model = EcgLanguageModel.from_pretrained(args.model)
    if model.image_encoder is None or model.label_tokens is None or model.label_tokens.quality is None:
        parser.error(f"{args.model}: needs an image encoder and signal-quality heads")
    data, ptbxl = load_ptbxl_arrays(args.signals, args.ptbxl, "mv")
    # noise as ECG-QA reads PTB-XL's columns (a note naming no lead is no noise), known for official rows only
    noise = noise_leads_table(ptbxl.table, data.ids, list(STANDARD_12)).any(1)
    noise = np.concatenate([noise, noise.any(1, keepdims=True)], 1)  # + "any kind of noises"
    official = ptbxl.table.loc[data.ids, "has_official_metadata"].to_numpy(dtype=bool)
    rng = np.random.default_rng(0)
    fold9 = data.valid[~np.isin(data.ids[data.valid], list(load_policy().fit_forbidden))]
    splits = {"train": balanced_rows(data.train[official[data.train]], noise[:, -1], args.n_train, rng),
              "valid": balanced_rows(fold9[official[fold9]], noise[:, -1], args.n_valid, rng)}
    encoder = model.image_encoder
    features = {}
    for name, rows in splits.items():
        distorted = np.arange(len(rows)) % 2 == 1
        seeds = np.arange(len(rows)) + (60_000_001 if name == "train" else 70_000_001)
        images = render_set(data.signals[rows], data.fs, seeds, distorted, encoder.config, args.workers,
                            not args.quiet, name)
        with torch.no_grad():
            features[name] = page_features(torch.from_numpy(student_tokens(encoder, images, batch=32)))
    with torch.no_grad():
        rows = splits["valid"]
        quality = model.label_tokens.quality(torch.from_numpy(data.signals[rows]), torch.from_numpy(data.masks[rows]))
    per_record = quality.numpy()[:, :: 1 + len(model.label_tokens.quality.leads)]  # each kind's record entry

    kinds = {}
    for k, kind in enumerate(QUALITY_KINDS):
        y_train, y_valid = noise[splits["train"], k], noise[splits["valid"], k]
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
        probe.fit(features["train"], y_train)
        kinds[kind] = {"n_valid_with": int(y_valid.sum()), "n_valid": int(len(y_valid)),
                       "picture_probe": auc_with_ci(y_valid, probe.predict_proba(features["valid"])[:, 1]),
                       "signal_quality_heads": auc_with_ci(y_valid, np.nan_to_num(per_record[:, k], nan=0.5))}
    result = {"model": str(args.model), "n_train": int(len(splits["train"])), "n_valid": int(len(splits["valid"])),
              "split": "renders of PTB-XL folds 1-8 (fit) and fold 9 (score), ECG-QA train patients only",
              "features": "image tokens' mean and maximum (page_features), standardised; logistic C=0.01",
              "kinds": kinds, "seconds": round(time.time() - started, 1), "environment": environment()}
    path = write_result("image_noise_probe.json", result)
    print(f"{'kind':<22} {'n (with)':>9}  picture probe AUC [95% CI]   signal-quality heads AUC [95% CI]")
    for kind, row in kinds.items():
        picture, signal = row["picture_probe"], row["signal_quality_heads"]
        print(f"{kind:<22} {row['n_valid']:>4} ({row['n_valid_with']:>3})  {picture['auc']:.3f} {picture['ci95']}"
              f"       {signal['auc']:.3f} {signal['ci95']}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
