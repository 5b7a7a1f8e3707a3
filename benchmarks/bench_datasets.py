"""Training-cache and conversation-generation speed on real PTB-XL / ECG-QA.

    python benchmarks/bench_datasets.py [--ptbxl DIR]

Writes benchmarks/results/datasets.json:
  cache_build_s      `data prepare`-equivalent build of the 100 Hz cache (21,799 records, 2 processes)
  cache_load_all_s   open the cache and load every record as float32 (a fresh process, page cache warm)
  batch64_ms         median time of a random-access batch of 64 records (p95 alongside)
  generate_100k_s    100,000 ECG-QA-style conversations (generator + Conversation objects) from the
                     ECG-QA train list; attribute building is timed separately (attributes_s)
  instruct_100k_s    100,000 ECGInstruct-style conversations
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, SHARED, environment, ptbxl_wfdb_dir, write_result  # noqa: E402

from ecgllm.datasets import ECGQA, PTBXL  # noqa: E402
from ecgllm.datasets.cache import ECGCache, build_cache  # noqa: E402
from ecgllm.datasets.conversation import from_ecgqa  # noqa: E402
from ecgllm.datasets.ecgqa_attributes import build_attributes  # noqa: E402
from ecgllm.datasets.ecgqa_generator import ECGQAGenerator  # noqa: E402
from ecgllm.datasets.instruct import InstructBuilder  # noqa: E402
from ecgllm.signal import PrepConfig  # noqa: E402

LOAD_ALL = ("import sys, time; t = time.perf_counter(); from ecgllm.datasets.cache import ECGCache; "
            "x = ECGCache.open(sys.argv[1]).load_all(); print(time.perf_counter() - t, x.shape[0])")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", help="PTB-XL root with records100/ (default: unpack the shared pack once)")
    args = parser.parse_args()
    root = ptbxl_wfdb_dir(args.ptbxl)
    ptbxl = PTBXL.load(SHARED / "ptbxl", records_root=root)
    result: dict = {}

    cache_dir = CACHE / "bench_cache_ptbxl100"
    if cache_dir.exists():
        import shutil

        shutil.rmtree(cache_dir)
    paths = [ptbxl.record_path(int(i), prefer_fs=100) for i in ptbxl.ecg_ids]
    t0 = time.perf_counter()
    build_cache(paths, ptbxl.table[["patient_id", "strat_fold"]].reset_index(), cache_dir,
                PrepConfig(fs=100.0, bandpass=None, window_s=10.0), "PTB-XL", workers=2, progress=False)
    result["cache_build_s"] = round(time.perf_counter() - t0, 2)
    runs = [subprocess.run([sys.executable, "-c", LOAD_ALL, str(cache_dir)], capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(3)]
    result["cache_load_all_s"] = round(float(np.median([float(r[0]) for r in runs])), 3)
    result["cache_records"] = int(runs[0][1])
    cache = ECGCache.open(cache_dir)
    rng = np.random.default_rng(0)
    ids = cache.index["ecg_id"].to_numpy()
    times = []
    for _ in range(200):
        batch = rng.choice(ids, 64, replace=False)
        t0 = time.perf_counter()
        cache.batch(batch)
        times.append((time.perf_counter() - t0) * 1000)
    result["batch64_ms"] = round(float(np.median(times)), 2)
    result["batch64_p95_ms"] = round(float(np.percentile(times, 95)), 2)

    measurements_csv = CACHE / "measurements_ptbxl100.csv"
    measurements = pd.read_csv(measurements_csv, index_col="ecg_id") if measurements_csv.exists() else None
    pool = ECGQA(SHARED / "ecgqa/ecgqa").split_ecg_ids("train")
    t0 = time.perf_counter()
    attributes = build_attributes(ptbxl, measurements)
    generator = ECGQAGenerator(attributes, pool)
    result["attributes_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    conversations = [from_ecgqa(s, split="train") for s in generator.generate(100_000, seed=0)]
    result["generate_100k_s"] = round(time.perf_counter() - t0, 2)
    result["generated"] = len(conversations)
    builder = InstructBuilder(ptbxl, pool, measurements)
    t0 = time.perf_counter()
    result["instruct_generated"] = len(builder.build(100_000, seed=0, split="train"))
    result["instruct_100k_s"] = round(time.perf_counter() - t0, 2)
    result["measurements_used"] = measurements is not None
    write_result("datasets.json", {**result, "command": "python benchmarks/bench_datasets.py", **environment()})


if __name__ == "__main__":
    main()
