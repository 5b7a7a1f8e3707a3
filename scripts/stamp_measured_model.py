"""Name the checkpoint a result JSON measured, for results written before the benchmarks recorded it.

A page that measures the shipped default says so when a newer default has shipped since
(`benchmarks/common.py: stale_default_note`). Results written before `measured_model` was recorded get it here,
read from git history: the default checkpoint as it stood at the last commit that wrote the result (a benchmark
measures the checkout it runs in, and its result is committed with it; a `--page-only` re-render committed after
another default shipped would mislead it, so stamp before shipping). A result that already names its model is left
alone; the benchmarks record it themselves now.

    python scripts/stamp_measured_model.py benchmarks/results/ecgqa_evidence.json benchmarks/results/images.json \
        benchmarks/results/ecgbench_images.json
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
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)
    if done.returncode:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout


def checkpoint_at(commit: str) -> dict:
    """measured_model() of the default checkpoint as committed at `commit`."""
    names = [name for name in git("ls-tree", "-r", "-z", "--name-only", commit, "--", CHECKPOINT).decode().split("\0")
             if name]
    weights = {name[len(CHECKPOINT) + 1:]: git("show", f"{commit}:{name}")
               for name in names if name.endswith(".safetensors")}
    if not weights:
        raise SystemExit(f"commit {commit} has no checkpoint at {CHECKPOINT}")
    config = f"{CHECKPOINT}/config.json"
    shipped_from = json.loads(git("show", f"{commit}:{config}")).get("shipped_from") if config in names else None
    return {"fingerprint": weights_fingerprint(weights), "shipped_from": shipped_from}


def last_unstamped_commit(relative: str) -> str:
    """The last commit that wrote the result's figures: the newest one whose copy names no model yet."""
    for commit in git("log", "--format=%H", "--", relative).decode().split():
        if "measured_model" not in json.loads(git("show", f"{commit}:{relative}")):
            return commit
    raise SystemExit(f"{relative}: no commit holds it without a model named, so none tells which checkpoint it measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="result JSON files (benchmarks/results/...)")
    args = parser.parse_args()
    for path in args.results:
        result = json.loads(path.read_text())
        if "measured_model" in result:
            print(f"{path}: names its model already ({result['measured_model']['fingerprint']})")
            continue
        commit = last_unstamped_commit(path.resolve().relative_to(ROOT).as_posix())
        result["measured_model"] = {**checkpoint_at(commit), "read_from": f"git: {CHECKPOINT} as committed with "
                                                                          f"this result (commit {commit[:7]})"}
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{path}: measured {result['measured_model']['shipped_from']} "
              f"({result['measured_model']['fingerprint']}; commit {commit[:7]})")


if __name__ == "__main__":
    main()
