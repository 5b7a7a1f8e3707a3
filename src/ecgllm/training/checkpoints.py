"""Run checkpoints of every training stage: Accelerate's state (model, optimizer, scheduler, every process's RNG
states, registered extras such as an EMA) plus a small JSON of where the run stands, written atomically (to a
temporary folder, then renamed), so a killed run resumes from its last complete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"


def fresh_accelerator(**kwargs):
    """An `Accelerator` for one training run. In a single process (no torchrun/`accelerate launch`), Accelerate's
    shared state from an earlier run in the same process is cleared first: it would refuse a run in another
    precision (the CLI runs each stage in a fresh process; tests and notebooks run several in one)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # Accelerate's own resets of its singletons (device included)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(**kwargs)


def seed_each_process(accelerator, seed: int) -> None:
    """Under torchrun every process starts from the same seed, so, left alone, every process would draw the same
    dropout masks (and crops, noise) for its own share of the batch. Called once the data order is fixed (the
    samplers keep their own seeded generators), it gives process k the seed ``seed + k``; a single process keeps
    its stream as it is, so single-process runs replay as before."""
    from accelerate.utils import set_seed

    if accelerator.num_processes > 1:
        set_seed(seed + accelerator.process_index)


def finished_checkpoints(root: Path, prefix: str) -> list[Path]:
    """The complete checkpoints ``root/<prefix>-*``, oldest first (a temporary or killed one has no state file)."""
    return sorted(p for p in root.glob(f"{prefix}-*") if (p / STATE_FILE).exists())


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def save_checkpoint(accelerator, root: Path, name: str, state: dict, keep: int) -> Path:
    """Save the run's state as ``root/name`` (every process takes part) and keep the newest ``keep`` of its kind
    (the name's prefix before the last '-')."""
    final = root / name
    tmp = root / f".tmp-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        tmp.rename(final)  # the checkpoint only counts once it is complete
        prefix = name.rsplit("-", 1)[0]
        for old in sorted(root.glob(f"{prefix}-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def drop_metrics_after(metrics_path: Path, key: str, last: int) -> None:
    """Keep the ``metrics.jsonl`` lines whose ``key`` (step or epoch) is at most ``last``, atomically: a killed run
    may have logged past its last checkpoint, and the resumed run logs those again. A line the kill tore (or
    any line that is not a JSON object) goes too. Nothing to do for a run that logged nothing yet."""
    if not metrics_path.exists():
        return
    lines = metrics_path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _logged_value(line, key, last) <= last]
    if len(kept) != len(lines) or (kept and not kept[-1].endswith("\n")):
        tmp = metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line if line.endswith("\n") else line + "\n" for line in kept))
        tmp.replace(metrics_path)


def _logged_value(line: str, key: str, last: int) -> float:
    """The line's ``key`` (``last`` for a line without it: kept); infinity for a line that does not parse."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return float("inf")
    return row.get(key, last) if isinstance(row, dict) else float("inf")
