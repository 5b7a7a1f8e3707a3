"""Name the checkpoint a result JSON measured, for results written before the benchmarks recorded it.

A page that measures the shipped default says so when a newer default has shipped since
(`benchmarks/common.py: stale_default_note`). Results written before `measured_model` was recorded get it here,
read from git history: the default checkpoint as it stood at the last commit that wrote the result (a benchmark
measures the checkout it runs in, and its result is committed with it). A result that already names its model
is left alone.

    python scripts/stamp_measured_model.py benchmarks/results/ecgqa_evidence.json benchmarks/results/images.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import DEFAULT_CHECKPOINT, weights_fingerprint  # noqa: E402

CHECKPOINT = DEFAULT_CHECKPOINT.relative_to(ROOT).as_posix()


def git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True).stdout


def checkpoint_at(commit: str) -> dict:
    """measured_model() of the default checkpoint as committed at `commit`."""
    names = git("ls-tree", "-r", "--name-only", commit, "--", CHECKPOINT).decode().split()
    weights = {name[len(CHECKPOINT) + 1:]: git("show", f"{commit}:{name}")
               for name in names if name.endswith(".safetensors")}
    if not weights:
        raise SystemExit(f"commit {commit} has no checkpoint at {CHECKPOINT}")
    config = f"{CHECKPOINT}/config.json"
    shipped_from = json.loads(git("show", f"{commit}:{config}")).get("shipped_from") if config in names else None
    return {"fingerprint": weights_fingerprint(weights), "shipped_from": shipped_from}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="result JSON files (benchmarks/results/...)")
    args = parser.parse_args()
    for path in args.results:
        result = json.loads(path.read_text())
        if "measured_model" in result:
            print(f"{path}: names its model already ({result['measured_model']['fingerprint']})")
            continue
        relative = path.resolve().relative_to(ROOT).as_posix()
        commit = git("log", "-1", "--format=%H", "--", relative).decode().strip()
        if not commit:
            raise SystemExit(f"{path}: not committed, so no commit tells which checkpoint it measured")
        result["measured_model"] = {**checkpoint_at(commit), "read_from": f"git: {CHECKPOINT} at commit {commit[:7]}, "
                                                                          "the last commit that wrote this result"}
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{path}: measured {result['measured_model']['shipped_from']} "
              f"({result['measured_model']['fingerprint']}; commit {commit[:7]})")


if __name__ == "__main__":
    main()
