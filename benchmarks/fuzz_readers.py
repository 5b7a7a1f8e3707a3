"""Fuzz every reader with 10,000 corrupted inputs per format (seeded): each must give a valid ECG or a typed
ECGReadError; crashes (any other exception) and hangs (> 10 s) are counted and the first ones listed.

    python benchmarks/fuzz_readers.py [--n 10000]   -> benchmarks/results/fuzz.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import ROOT, environment, write_result

sys.path.insert(0, str(ROOT))
from tests.fuzz_readers import fuzz_case, seeds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="inputs per format")
    args = parser.parse_args()
    per_format, failures, started = {}, [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds(Path(tmp)):
            rng = np.random.default_rng(0)
            counts, t0 = Counter(), time.time()
            for _ in range(args.n):
                outcome = fuzz_case(seed, Path(tmp) / "case", rng)
                counts[outcome.split(":")[0]] += 1
                if outcome not in ("ok", "typed-error") and len(failures) < 20:
                    failures.append(f"{seed.name}: {outcome}")
            per_format[seed.name] = {"inputs": args.n, "valid_ecg": counts["ok"], "typed_error": counts["typed-error"],
                                     "crash": counts["crash"], "hang": counts["hang"],
                                     "seconds": round(time.time() - t0, 1)}
            print(seed.name, per_format[seed.name], flush=True)
    write_result("fuzz.json", {
        "inputs_per_format": args.n, "formats": per_format,
        "total_inputs": sum(v["inputs"] for v in per_format.values()),
        "crashes": sum(v["crash"] for v in per_format.values()), "hangs": sum(v["hang"] for v in per_format.values()),
        "first_failures": failures, "seconds": round(time.time() - started, 1), "environment": environment()})


if __name__ == "__main__":
    main()
