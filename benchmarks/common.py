"""Helpers shared by the benchmarks: locating real data and writing flat JSON results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path(os.environ.get("ECGLLM_CACHE", ROOT / ".cache"))


def ptbxl_wfdb_dir(explicit: str | None = None) -> Path:
    """The official PTB-XL WFDB layout; unpacked once from the shared lossless pack when absent."""
    target = Path(explicit) if explicit else CACHE / "ptbxl_wfdb"
    if (target / "records100").is_dir() and len(list((target / "records100").glob("*"))) >= 22:
        return target
    pack = SHARED / "ptbxl" / "ptbxl_pack.py"
    if not pack.exists():
        sys.exit(f"no PTB-XL WFDB folder at {target} and no pack at {pack} to unpack it from")
    print(f"unpacking PTB-XL into {target} (once) ...", flush=True)
    subprocess.run([sys.executable, str(pack), "unpack", "--out", str(target)], check=True)
    return target


def environment() -> dict:
    import numpy
    import scipy

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
