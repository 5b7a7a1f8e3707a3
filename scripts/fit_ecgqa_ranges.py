"""Estimate ECG-QA's numeric-feature normal ranges from the official *training* chunk and write them to
src/ecgllm/data/ecgqa_normal_ranges.json (validation samples are left for judging them).

    python scripts/fit_ecgqa_ranges.py      # needs .cache/measurements_ptbxl100.csv (benchmarks/ecgqa_agreement.py makes it)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd

from ecgllm.datasets import ECGQA
from ecgllm.datasets.ecgqa_ranges import RANGES_JSON, _edges, feature_agreement, fit_normal_ranges

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = Path(os.environ.get("ECGLLM_CACHE", ROOT / ".cache"))


def main() -> None:
    measurements_csv = CACHE / "measurements_ptbxl100.csv"
    if not measurements_csv.exists():
        sys.exit(f"{measurements_csv} missing: run benchmarks/ecgqa_agreement.py once first")
    measurements = pd.read_csv(measurements_csv, index_col="ecg_id")
    qa = ECGQA(SHARED / "ecgqa/ecgqa")
    train, valid = qa.samples("train"), qa.samples("valid")
    features = fit_normal_ranges(train, measurements)
    for feature, entry in features.items():
        entry["valid_agreement"] = round(feature_agreement(valid, measurements, feature, *_edges(entry["range_ms"]))[0], 4)
    RANGES_JSON.write_text(json.dumps({
        "features": features,
        "fitted_on": "official ECG-QA PTB-XL train chunk(s) present in shared data; measurements by ecgllm "
                     "(neurokit2, 100 Hz); validation chunk only for the valid_agreement column",
        "command": "python scripts/fit_ecgqa_ranges.py"}, indent=2) + "\n")
    print(RANGES_JSON.read_text())


if __name__ == "__main__":
    main()
