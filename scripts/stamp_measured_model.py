"""Name the checkpoint a result JSON measured, for results written before the benchmarks recorded it.

A page that measures the shipped default says so when a newer default has shipped since
(`benchmarks/common.py: stale_default_note`). Results written before `measured_model` was recorded get it here,
read from git history: the default checkpoint as it stood at the last commit that wrote the result (a benchmark
measures the checkout it runs in, and its result is committed with it; a `--page-only` re-render committed after
another default shipped would mislead it, so stamp before shipping). A result that already names its model is left
alone; the benchmarks record it themselves now.

    python scripts/stamp_measured_model.py benchmarks/results/ecgqa_evidence.json benchmarks/results/images.json \
        benchmarks/results/ecgbench_images.json

A model's fingerprint was once the hash of its folder's safetensors files; it is now the hash of its weights read
under the model's own keys, whichever layout saved them. ``--rehash COMMIT`` moves results that name the default as
committed at COMMIT from the first to the second, once the default on disk holds those very weights (e.g. after
its conversion to transformers' layout); a result that names another model is left alone.

``--signal-fingerprint`` adds to results that name the default on disk (by its whole fingerprint) the fingerprint of
its weights without the picture path (`benchmarks/common.py: measured_model`), which results written before it
existed lack; run it before the picture path of the default changes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import DEFAULT_CHECKPOINT, fingerprint, measured_model, weights_fingerprint  # noqa: E402

CHECKPOINT = DEFAULT_CHECKPOINT.relative_to(ROOT).as_posix()


def git(*args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)
    if done.returncode:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout


def checkpoint_at(commit: str, file_hash: bool = False) -> dict:
    """measured_model() of the default checkpoint as committed at `commit` (its files written out, then read as
    a benchmark reads the folder); ``file_hash``: with the hash of its safetensors files (the earlier fingerprint)."""
    names = [name for name in git("ls-tree", "-r", "-z", "--name-only", commit, "--", CHECKPOINT).decode().split("\0")
             if name]
    if not any(name.endswith(".safetensors") for name in names):
        raise SystemExit(f"commit {commit} has no checkpoint at {CHECKPOINT}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in names:
            target = folder / name[len(CHECKPOINT) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(git("show", f"{commit}:{name}"))
        config = folder / "config.json"
        shipped_from = json.loads(config.read_text()).get("shipped_from") if config.exists() else None
        out = {"fingerprint": fingerprint(folder), "shipped_from": shipped_from,
               "signal_fingerprint": fingerprint(folder, signals_only=True)}
        if file_hash:
            out["file_hash"] = weights_fingerprint({part.relative_to(folder).as_posix(): part.read_bytes()
                                                    for part in folder.rglob("*.safetensors")})
        return out


def rehash(results: list[Path], commit: str) -> None:
    """``--rehash``: see the module's docstring."""
    then = checkpoint_at(commit, file_hash=True)
    now = fingerprint(DEFAULT_CHECKPOINT)
    if then["fingerprint"] != now:
        raise SystemExit(f"{CHECKPOINT} holds other weights ({now}) than at {commit} ({then['fingerprint']})")
    for path in results:
        result = json.loads(path.read_text())
        measured = result.get("measured_model", {})
        if measured.get("fingerprint") != then["file_hash"]:
            print(f"{path}: names {measured.get('fingerprint')}, not the files of {commit[:7]}'s default: left alone")
            continue
        result["measured_model"] = {**measured, "fingerprint": now,
                                    "file_hash": then["file_hash"]}  # what the result first recorded
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{path}: {then['file_hash']} (its files at {commit[:7]}) -> {now} (its weights)")


def add_signal_fingerprint(results: list[Path]) -> None:
    """``--signal-fingerprint``: see the module's docstring."""
    now = measured_model(DEFAULT_CHECKPOINT)
    for path in results:
        result = json.loads(path.read_text())
        measured = result.get("measured_model", {})
        if measured.get("fingerprint") != now["fingerprint"]:
            print(f"{path}: names {measured.get('fingerprint')}, not the default on disk ({now['fingerprint']}): "
                  f"left alone")
            continue
        result["measured_model"] = {**measured, "signal_fingerprint": now["signal_fingerprint"]}
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{path}: {now['fingerprint']}, without its picture path {now['signal_fingerprint']}")


def last_unstamped_commit(relative: str) -> str:
    """The last commit that wrote the result's figures: the newest one whose copy names no model yet."""
    for commit in git("log", "--format=%H", "--", relative).decode().split():
        if "measured_model" not in json.loads(git("show", f"{commit}:{relative}")):
            return commit
    raise SystemExit(f"{relative}: no commit holds it without a model named, so none tells which checkpoint it measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="result JSON files (benchmarks/results/...)")
    parser.add_argument("--rehash", metavar="COMMIT", help="move results that name the default as committed at "
                        "COMMIT from the hash of its files to the hash of its weights")
    parser.add_argument("--signal-fingerprint", action="store_true", help="add the fingerprint without the picture "
                        "path to results that name the default on disk")
    args = parser.parse_args()
    if args.signal_fingerprint:
        add_signal_fingerprint(args.results)
        return
    if args.rehash:
        rehash(args.results, args.rehash)
        return
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
