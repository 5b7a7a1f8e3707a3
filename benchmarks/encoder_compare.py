"""Compare finished encoder pretraining runs on PTB-XL: fold-9 / fold-10 macro AUC of each, of the average of
their scores (what an ensemble of the runs would reach), and the statements whose AUC (folds 9 + 10 pooled)
moves most from the first run to the second.

    python benchmarks/encoder_compare.py RUN_A RUN_B [RUN ...] [--ecg-cache DIR] [--ptbxl DIR] [--aggregations]

Each run is an `ecgllm train recipes/encoder_ptbxl.yaml` output folder (its encoder.safetensors,
head.safetensors and result.json: the weights the run scored, its weight average where it kept one).
``--aggregations`` also scores the first run with the max over windows and with one pass over the whole
record, against the mean over windows that training uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, SHARED  # noqa: E402

from ecgllm.models.encoder_source import encoder_head, encoder_meta, encoder_state  # noqa: E402
from ecgllm.models.encoders import build_encoder  # noqa: E402
from ecgllm.training.pretrain_encoder import (EncoderClassifier, crop_samples, group_aucs,  # noqa: E402
                                              load_ptbxl_arrays, score_records)


def load_run(run: Path, n_outputs: int) -> tuple[EncoderClassifier, dict]:
    """An encoder run's classifier, read as every stage reads an encoder (`ecgllm.models.encoder_source`), and its
    recipe."""
    meta = encoder_meta(run)
    model = EncoderClassifier(build_encoder(meta["encoder"], **meta["encoder_kwargs"]), n_outputs)
    model.encoder.load_state_dict(encoder_state(run))
    model.head.load_state_dict(encoder_head(run))
    return model.eval(), json.loads((run / "result.json").read_text())["config"]


def aucs(y: np.ndarray, scores: np.ndarray) -> str:
    super_auc, all71_auc = group_aucs(y, scores)
    return f"super {super_auc:.4f} / 71 {all71_auc:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="two or more runs")
    parser.add_argument("--ecg-cache", default=str(CACHE / "bench_cache_ptbxl100"))
    parser.add_argument("--ptbxl", default=str(SHARED / "ptbxl"))
    parser.add_argument("--aggregations", action="store_true")
    parser.add_argument("--top", type=int, default=8, help="statements shown at each end")
    args = parser.parse_args()
    if len(args.runs) < 2:
        parser.error("give at least two runs")
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    first = json.loads((args.runs[0] / "result.json").read_text())["config"]
    try:
        data, _ = load_ptbxl_arrays(args.ecg_cache, args.ptbxl, first["normalize"])
    except FileNotFoundError as exc:  # e.g. no benchmark cache yet: bench_encoder.py builds it
        parser.error(f"{exc} (--ecg-cache; `python benchmarks/bench_encoder.py` builds the default one)")
    stride = int(first["eval_stride_s"] * data.fs)
    scores: dict[tuple[int, str], np.ndarray] = {}
    for k, run in enumerate(args.runs):
        model, config = load_run(run, data.y.shape[1])
        crops = crop_samples(config["crop_s"], data.fs)
        for split in ("valid", "test"):
            rows = getattr(data, split)
            scores[k, split] = score_records(model, data.signals[rows], crops, stride, masks=data.masks[rows])
            print(f"{run.name:>24s} fold {9 if split == 'valid' else 10}: {aucs(data.y[rows], scores[k, split])}")
        if args.aggregations and k == 0:
            for split in ("valid", "test"):
                rows, fold = getattr(data, split), 9 if split == "valid" else 10
                window_max = score_records(model, data.signals[rows], crops, stride, reduce="max",
                                           masks=data.masks[rows])
                whole = score_records(model, data.signals[rows], data.signals.shape[-1], stride,  # one window
                                      masks=data.masks[rows])
                print(f"{'':>24s} fold {fold}, max over windows: {aucs(data.y[rows], window_max)}")
                print(f"{'':>24s} fold {fold}, whole record:     {aucs(data.y[rows], whole)}")
    for split in ("valid", "test"):
        rows = getattr(data, split)
        mean = np.mean([scores[k, split] for k in range(len(args.runs))], axis=0)
        label = f"average of the {len(args.runs)}"
        print(f"{label:>24s} fold {9 if split == 'valid' else 10}: {aucs(data.y[rows], mean)}")
    y = np.concatenate([data.y[data.valid], data.y[data.test]])
    pooled = [np.concatenate([scores[k, "valid"], scores[k, "test"]]) for k in (0, 1)]
    moves = []
    for j, code in enumerate(data.classes71):
        if 0 < y[:, j].sum() < len(y):
            a, b = (roc_auc_score(y[:, j], p[:, j]) for p in pooled)
            moves.append((b - a, code, int(y[:, j].sum()), a, b))
    moves.sort()
    print("statement AUC, folds 9+10 pooled (first run -> second run):")
    for delta, code, positives, a, b in moves[: args.top] + moves[-args.top:]:
        print(f"  {code:8s} {a:.3f} -> {b:.3f} ({delta:+.3f}; {positives} positives)")


if __name__ == "__main__":
    main()
