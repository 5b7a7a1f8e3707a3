"""Helpers shared by the benchmarks: locating real data and writing flat JSON results."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path(os.environ.get("ECGLLM_CACHE", ROOT / ".cache"))
DEFAULT_CHECKPOINT = ROOT / "src" / "ecgllm" / "data" / "checkpoint"


# A model folder's picture path: the image encoder's weights (under this key prefix) and the files beside them; a
# signal never meets them
PICTURE_PATH_FILES = ("page_check.safetensors", "image_quality.safetensors")
PICTURE_PATH_KEYS = "image_encoder."


def fingerprint(path: Path, signals_only: bool = False) -> str:
    """A short hash of a file, or of a checkpoint's trained weights (what tells two models apart). A language-model
    folder is hashed over its weights under the model's own keys (`model_folder.saved_weights`), so a LoRA or
    frozen-LLM folder converted from the older layout keeps its fingerprint (an older full-LLM folder's llm/ counts
    by its files' bytes); any other folder over every *.safetensors under it, in the order of their paths relative
    to it. ``signals_only``: a language-model folder without its picture path (what a signal is answered with).
    How the image encoder reads a picture counts too, where it is not the default (`picture_reading`)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    from ecgllm.models.model_folder import WEIGHT_FILES, is_model_folder, saved_weights

    files = {part.relative_to(path).as_posix(): part for part in path.rglob("*.safetensors") if part.is_file()}
    if not is_model_folder(path):
        return weights_fingerprint({**{name: part.read_bytes() for name, part in files.items()},
                                    **picture_reading(path)})
    state = saved_weights(path)
    if signals_only:
        files = {name: part for name, part in files.items() if name not in PICTURE_PATH_FILES}
        state = {key: tensor for key, tensor in state.items() if not key.startswith(PICTURE_PATH_KEYS)}
    # the rest (the page check and image quality head beside the image encoder) counts by its bytes
    return weights_fingerprint({**{name: part.read_bytes() for name, part in files.items() if name not in WEIGHT_FILES},
                                **({} if signals_only else picture_reading(path))}, state)


def picture_reading(path: Path) -> dict[str, bytes]:
    """How the folder's image encoder reads a picture, where no weight says it: the fields of its config beyond its
    shape (`ImageEncoderConfig.shape`: today the view shift) that differ from their defaults, as one entry for
    `weights_fingerprint` (none for a folder that reads the page alone, so its fingerprint is what it was before
    the field existed). Two folders with the same weights that read pictures differently answer differently."""
    from ecgllm.models.image_encoder import ImageEncoderConfig
    from ecgllm.models.model_folder import is_model_folder

    # the raw JSON, not read_config: a folder trained with a feature since removed still has a fingerprint
    if (path / "image_encoder.json").is_file():
        config = json.loads((path / "image_encoder.json").read_text()).get("config")
    elif is_model_folder(path):
        config = (json.loads((path / "config.json").read_text()).get("image_encoder") or {}).get("config")
    else:
        config = None
    if not config:
        return {}
    default, read = ImageEncoderConfig().to_dict(), ImageEncoderConfig(**config)
    reading = {k: v for k, v in read.to_dict().items() if k not in read.shape() and v != default[k]}
    return {"image encoder reading": json.dumps(reading, sort_keys=True).encode()} if reading else {}


def weights_fingerprint(files: dict[str, bytes], state: dict | None = None) -> str:
    """fingerprint() of a folder given as {path relative to it: bytes} and, for a language model, the weights read
    under the model's own keys (each key with its tensor's dtype, shape and bytes, in the order of the keys)."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state or {}):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for relative in sorted(files, key=lambda name: PurePosixPath(name).parts):  # the same on every platform
        digest.update(relative.encode() + files[relative])
    return digest.hexdigest()[:12]


def same_tensors(first: dict, second: dict) -> bool:
    """Whether two state dicts hold the same keys and exactly equal tensors."""
    import torch

    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def measured_model(folder: Path) -> dict:
    """Which checkpoint a page measured: its weights' fingerprint and the run it was shipped from (for a folder
    that was never shipped, its path). Every safetensors counts, the image encoder's too: a page names the whole
    model it measured. A language-model folder's fingerprint without its picture path comes too: a page that gave
    the model signals only still holds for a default whose picture path alone changed (`stale_default_note`)."""
    from ecgllm.models.model_folder import is_model_folder

    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    name = os.path.relpath(folder.resolve(), ROOT) if folder.resolve().is_relative_to(ROOT.parent) else str(folder)
    return {"fingerprint": fingerprint(folder), "shipped_from": config.get("shipped_from") or name,
            **({"signal_fingerprint": fingerprint(folder, signals_only=True)} if is_model_folder(folder) else {})}


def claim_run_folder(out: Path, folder: Path) -> dict:
    """The model a benchmark's --out holds answers of: its run folders resume by question, not by model, so answers
    of another model there would pass as this one's. Recorded on first use; another model is refused."""
    now = measured_model(folder)
    seen = out / "measured_model.json"
    if seen.exists():
        before = json.loads(seen.read_text())
        if before["fingerprint"] != now["fingerprint"]:
            raise SystemExit(f"{out} holds answers of another model ({before['shipped_from']}, weights "
                             f"{before['fingerprint']}; {folder} has {now['fingerprint']}): give another --out")
    out.mkdir(parents=True, exist_ok=True)
    seen.write_text(json.dumps(now, indent=2) + "\n")
    return now


def stale_default_note(result: dict, reads_pictures: bool = True) -> str:
    """For a page that measures the shipped default: '' while its JSON's `measured_model` is today's default,
    otherwise a warning that names both (a page is re-measured by its own command after a new default ships). A
    page that gave the model signals only (``reads_pictures`` False) measured today's default too when only the
    picture path has changed since; it says so instead."""
    now = measured_model(DEFAULT_CHECKPOINT)
    measured = result.get("measured_model")
    if measured and measured["fingerprint"] == now["fingerprint"]:
        return ""
    if measured and not reads_pictures and measured.get("signal_fingerprint") == now.get("signal_fingerprint") \
            and now.get("signal_fingerprint"):
        return (f"Measured on `{measured.get('shipped_from')}` (weights {measured['fingerprint']}); today's default "
                f"(weights {now['fingerprint']}) differs from it only in its picture path (image encoder, page check, "
                f"image quality head), which these figures, all from signals, never used: the weights that answered "
                f"them are today's (without the picture path: {now['signal_fingerprint']}).")
    was = (f"`{measured.get('shipped_from')}` (weights {measured.get('fingerprint')})" if measured
           else "a checkpoint this result does not name")
    return (f"**Not measured on today's default.** These figures were measured on {was}; the default shipped now is "
            f"`{now['shipped_from']}` (weights {now['fingerprint']}). The page's command, run with `--model "
            "src/ecgllm/data/checkpoint` and a new `--out`, measures them on it.")


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


def eval_command(model: Path, data: Path | list, signals: Path | str, out: Path, probe: str,
                 *options: str) -> list[str]:
    """The `ecgllm eval ecgqa` run of one model on one set (a file or several) with one probe, quiet."""
    files = data if isinstance(data, list) else [data]
    return [sys.executable, "-m", "ecgllm.serving.cli", "eval", "ecgqa", "--data", *map(str, files), "--ptbxl",
            str(signals), "--labels", str(SHARED / "ptbxl"), "--model", str(model), "--out", str(out), "--probe", probe,
            "--quiet", *options]


def run_on_cores(jobs: list[tuple[Path, list[str]]], cores: list[int]) -> None:
    """Run (out folder, command) jobs, one worker per pinned core taking the next job not yet taken, each command
    on one thread; the first failure stops the rest from starting and is reported (its run folder resumes)."""
    import queue
    import shlex
    import threading

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    failed: list[str] = []

    def worker(core: int) -> None:
        while not failed:
            try:
                out, command = todo.get_nowait()
            except queue.Empty:
                return
            try:
                if subprocess.run(["taskset", "-c", str(core), *command], env=env).returncode:
                    failed.append(f"{out}: {shlex.join(command)}")
            except Exception as exc:  # noqa: BLE001 - e.g. no taskset: stops the others, reported below
                failed.append(f"{out}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(core,)) for core in cores]
    for thread in threads:
        thread.start()
    for thread in threads:  # every child ends before the caller goes on: a re-run never races one
        thread.join()
    if failed:
        raise SystemExit(f"an evaluation failed ({failed[0]}; see above); re-run to resume")


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
