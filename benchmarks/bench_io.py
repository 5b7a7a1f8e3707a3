"""Read + prepare speed on all 21,799 PTB-XL records (official WFDB layout), and measurement speed.

    python benchmarks/bench_io.py [--ptbxl DIR] [--workers 2]

Writes benchmarks/results/io.json with, measured in the same run:
  records_per_s           read_ecg + prepare (100 Hz, 0.5-40 Hz band-pass, z-score, 10 s), all records,
                          `workers` processes writing into one shared-memory array; median of
                          `repeats` full passes (all passes in records_per_s_runs)
  records_per_s_1proc     the same pipeline in one process, on a subset
  baseline_records_per_s  a plain `wfdb.rdsamp` loop (one process, read only), on the same subset
  measure_records_per_s   ecgllm.signal.measure (neurokit2), `workers` processes, on a subset
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, ptbxl_wfdb_dir, write_result  # noqa: E402

CONFIG = dict(fs=100.0, normalize="zscore", window_s=10.0)
CHUNK = int(__import__("os").environ.get("ECGLLM_BENCH_CHUNK", "512"))
_out: np.ndarray | None = None


def _init(out_path: str, n: int) -> None:
    global _out
    warnings.simplefilter("ignore")
    _out = np.lib.format.open_memmap(out_path, mode="r+")


def _prepare_chunk(job: tuple[int, list[str]]) -> int:
    from ecgllm import read_ecg
    from ecgllm.signal import PrepConfig, prepare_batch

    start, paths = job
    signals, _ = prepare_batch([read_ecg(p) for p in paths], PrepConfig(**CONFIG))
    _out[start:start + len(paths)] = signals
    return len(paths)


def _measure_one(path: str) -> float | None:
    from ecgllm import read_ecg
    from ecgllm.signal import measure

    warnings.simplefilter("ignore")
    return measure(read_ecg(path)).heart_rate


def bench_prepare(paths: list[str], workers: int) -> float:
    jobs = [(i, paths[i:i + CHUNK]) for i in range(0, len(paths), CHUNK)]
    # The output lives in shared memory when the OS offers it: workers hand back 1 GB of float32 without
    # pickling it and without measuring the disk's write-back instead of the pipeline.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        out_path = str(Path(tmp) / "prepared.npy")
        np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(len(paths), 12, 1000)).flush()
        t0 = time.perf_counter()
        if workers == 1:
            _init(out_path, len(paths))
            done = sum(map(_prepare_chunk, jobs))
        else:
            with mp.get_context("fork").Pool(workers, initializer=_init, initargs=(out_path, len(paths))) as pool:
                done = sum(pool.imap_unordered(_prepare_chunk, jobs))
        elapsed = time.perf_counter() - t0
        check = np.load(out_path, mmap_mode="r")
        assert done == len(paths) and np.isfinite(check[-1]).all() and np.abs(check[-1]).max() > 0
    return len(paths) / elapsed


def bench_baseline(paths: list[str]) -> float:
    import wfdb

    t0 = time.perf_counter()
    for p in paths:
        wfdb.rdsamp(p[:-4])
    return len(paths) / (time.perf_counter() - t0)


def bench_measure(paths: list[str], workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        rates = pool.map(_measure_one, paths, chunksize=8)
    return len(paths) / (time.perf_counter() - t0), sum(r is not None for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", help="PTB-XL root with records100/ (default: unpack the shared pack once)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--subset", type=int, default=3000, help="records for the 1-process and baseline runs")
    parser.add_argument("--repeats", type=int, default=3, help="full passes; the median is reported")
    parser.add_argument("--measure-n", type=int, default=400, help="records for the measurement run")
    args = parser.parse_args()

    root = ptbxl_wfdb_dir(args.ptbxl)
    paths = sorted(str(p) for p in (root / "records100").glob("*/*_lr.hea"))
    rng = np.random.default_rng(0)
    subset = [paths[i] for i in sorted(rng.choice(len(paths), min(args.subset, len(paths)), replace=False))]
    print(f"{len(paths)} records; warming the file cache ...", flush=True)
    for p in paths:  # every run reads from the page cache, so runs compare code, not disks
        Path(p).read_bytes(), Path(p[:-4] + ".dat").read_bytes()

    baseline = bench_baseline(subset)
    one_proc = bench_prepare(subset, 1)
    runs = [bench_prepare(paths, args.workers) for _ in range(args.repeats)]
    rate = float(np.median(runs))
    measure_rate, measured = bench_measure(subset[: args.measure_n], args.workers)
    write_result("io.json", {
        "records_per_s": round(rate, 1),
        "records_per_s_runs": [round(r, 1) for r in runs],
        "baseline_records_per_s": round(baseline, 1),
        "ratio_vs_baseline": round(rate / baseline, 2),
        "records_per_s_1proc": round(one_proc, 1),
        "ratio_1proc_vs_baseline": round(one_proc / baseline, 2),
        "measure_records_per_s": round(measure_rate, 1),
        "measure_with_heart_rate": measured,
        "n_records": len(paths), "n_subset": len(subset), "n_measure": min(args.measure_n, len(subset)),
        "workers": args.workers, "prepare": CONFIG, "dataset": "PTB-XL v1.0.3 records100 (WFDB)",
        "command": "python benchmarks/bench_io.py", **environment(),
    })


if __name__ == "__main__":
    main()
