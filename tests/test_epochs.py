"""The training engine of every stage (`ecgllm.training.engine`) on a toy task: a crash mid-epoch resumes to
bit-identical weights with dropout on, by epochs or by steps with gradient accumulation, the earlier single-file
state converts, a changed recipe is refused, and two processes share out each batch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ecgllm.training.config import RecipeError
from ecgllm.training.engine import LEGACY_STATE, Schedule, Task, prepare_run, run_training, stage_accelerator
from tests.conftest import logged


@dataclass
class ToyRecipe:
    output_dir: str
    epochs: int = 3
    seed: int = 0
    lr: float = 0.05


class Crash(Exception):
    pass


class ToyTask(Task):
    """Noisy regression through dropout; batches from a generator seeded by (seed, epoch), as the stages draw them."""

    label = "toy"

    def __init__(self, seed: int, crash_at: tuple[int, int] | None = None, batches_per_epoch: int = 6) -> None:
        self.seed, self.crash_at, self.batches_per_epoch = seed, crash_at, batches_per_epoch

    def epoch_batches(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        for step in range(self.batches_per_epoch):
            if (epoch, step) == self.crash_at:
                raise Crash
            x = rng.normal(size=(8, 4)).astype(np.float32)
            yield torch.from_numpy(x), torch.from_numpy(x.sum(1, keepdims=True))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def metrics(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {"weight_norm": round(float(model[0].weight.detach().norm()), 6)}


def toy_run(recipe: ToyRecipe, ema_decay: float = 0.0):
    torch.manual_seed(recipe.seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr,
                                                    total_steps=recipe.epochs * 6)
    return prepare_run(stage_accelerator("cpu", "no"), model, optimizer, scheduler, Path(recipe.output_dir),
                       recipe.seed, ema_decay=ema_decay)


def train(recipe: ToyRecipe, crash_at=None, ema_decay: float = 0.0) -> tuple[dict, list[dict]]:
    run = toy_run(recipe, ema_decay)
    history = run_training(run, ToyTask(recipe.seed, crash_at), Schedule(epochs=recipe.epochs), recipe, progress=False)
    with run.scored() as scored:
        return {k: v.clone() for k, v in scored.state_dict().items()}, history


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("crash_at", [(1, 3), (2, 0)])
def test_a_crash_mid_epoch_resumes_to_bit_identical_weights(tmp_path, crash_at):
    clean, clean_history = train(ToyRecipe(str(tmp_path / "clean")), ema_decay=0.9)
    crashed = ToyRecipe(str(tmp_path / "crashed"))
    with pytest.raises(Crash):
        train(crashed, crash_at, ema_decay=0.9)
    assert sorted(p.name for p in (tmp_path / "crashed/checkpoints").iterdir()) == [f"epoch-{crash_at[0]:04d}"]
    # An epoch is logged before its checkpoint is saved: as if the run had been killed between the two, the epoch
    # after the checkpoint is in metrics.jsonl already (and a line the kill tore); the resumed run trains it again
    # and logs it once.
    with (tmp_path / "crashed/metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": %d, "loss": -1.0, "epoch_s": 0.0}\n{"epoch": %d, "lo' % (crash_at[0] + 1, crash_at[0] + 2))
    resumed, history = train(crashed, ema_decay=0.9)
    assert same(clean, resumed)  # dropout masks, data order and the EMA all replay
    strip = [{k: v for k, v in h.items() if k != "epoch_s"} for h in history]
    assert strip == [{k: v for k, v in h.items() if k != "epoch_s"} for h in clean_history]
    assert [{k: v for k, v in h.items() if k != "epoch_s"} for h in logged(tmp_path / "crashed")] == strip
    finished, _ = train(crashed, ema_decay=0.9)  # every epoch done: nothing trains again
    assert same(clean, finished)


def test_the_resumed_weights_differ_from_a_run_that_replays_other_dropout(tmp_path):
    """The check above can fail: another seed's dropout gives other weights from the same data."""
    a, _ = train(ToyRecipe(str(tmp_path / "a"), epochs=1))
    torch.manual_seed(1)
    run = toy_run(ToyRecipe(str(tmp_path / "b"), epochs=1))
    torch.manual_seed(123)  # the same initial weights and data, other dropout masks
    run_training(run, ToyTask(0), Schedule(epochs=1), ToyRecipe(str(tmp_path / "b"), epochs=1), progress=False)
    b = run.trained.state_dict()
    assert not same(a, b)


STEPS = Schedule(max_steps=8, save_every=2, log_every=1, keep=10, grad_accum=2)  # 5 batches: 3 steps an epoch


def train_steps(recipe: ToyRecipe, crash_at=None) -> dict:
    run = toy_run(recipe)
    run_training(run, ToyTask(recipe.seed, crash_at, batches_per_epoch=5), STEPS, recipe, progress=False)
    return {k: v.clone() for k, v in run.trained.state_dict().items()}


@pytest.mark.parametrize("crash_at", [(1, 3), (2, 0)])
def test_a_run_by_steps_with_accumulation_resumes_inside_an_epoch_to_bit_identical_weights(tmp_path, crash_at):
    """The language-model stages' schedule: optimizer steps of two batches each (an epoch's odd last batch is a step
    of its own), a checkpoint every second step; a crash inside an epoch resumes from the last step checkpoint,
    skipping the batches that epoch already used, and logs each step once."""
    clean = train_steps(ToyRecipe(str(tmp_path / "clean")))
    crashed = ToyRecipe(str(tmp_path / "crashed"))
    with pytest.raises(Crash):
        train_steps(crashed, crash_at)
    saved = sorted(p.name for p in (tmp_path / "crashed/checkpoints").iterdir())
    assert saved == {(1, 3): ["step-00000002", "step-00000004"], (2, 0): ["step-00000002", "step-00000004",
                                                                         "step-00000006"]}[crash_at]
    resumed = train_steps(crashed)
    assert same(clean, resumed)
    assert [row["step"] for row in logged(tmp_path / "crashed")] == list(range(1, 9))
    assert [row["loss"] for row in logged(tmp_path / "crashed")] == [row["loss"] for row in logged(tmp_path / "clean")]
    with pytest.raises(ValueError, match="either epochs or max_steps"):
        Schedule(epochs=1, max_steps=1)
    empty = ToyRecipe(str(tmp_path / "empty"))
    with pytest.raises(RecipeError, match="an epoch has no batch"):
        run_training(toy_run(empty), ToyTask(0, batches_per_epoch=0), STEPS, empty, progress=False)


def test_a_step_checkpoint_of_the_earlier_loop_resumes_only_when_asked(tmp_path):
    """The language-model stages' earlier loop counted the schedule and the batch size per process: its step
    checkpoints (no "format" in trainer_state.json) are refused unless --resume-anyway."""
    import json

    recipe = ToyRecipe(str(tmp_path / "run"))
    with pytest.raises(Crash):
        train_steps(recipe, (1, 3))
    state_file = tmp_path / "run/checkpoints/step-00000004/trainer_state.json"
    state_file.write_text(json.dumps({"step": 4}))  # as the earlier loop wrote it
    with pytest.raises(RecipeError, match="before step checkpoints recorded their format"):
        train_steps(recipe)
    run = toy_run(recipe)
    run_training(run, ToyTask(0, batches_per_epoch=5), STEPS, recipe, progress=False, resume_anyway=True)
    assert [row["step"] for row in logged(tmp_path / "run")] == list(range(1, 9))


class FixedBatches(Task):
    """The same batches every epoch, for the arithmetic of one optimizer step."""

    label = "fixed"

    def __init__(self, batches: list) -> None:
        self.fixed, self.batches_per_epoch = batches, len(batches)

    def epoch_batches(self, epoch: int):
        return iter(self.fixed)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)


def one_step(batches: list, grad_accum: int, out: Path) -> dict:
    """A linear model's weights after one SGD step over ``batches`` (grad_accum of them make the step)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    run = prepare_run(stage_accelerator("cpu", "no"), model, optimizer, scheduler, out, 0)
    run_training(run, FixedBatches(batches), Schedule(max_steps=1, grad_accum=grad_accum), ToyRecipe(str(out)),
                 progress=False)
    return {k: v.detach().clone() for k, v in run.trained.state_dict().items()}


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_accumulated_batches_step_as_their_combined_batch_would(tmp_path):
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 4, generator=generator), torch.randn(8, 1, generator=generator)
    together = one_step([(x, y)], 1, tmp_path / "together")
    accumulated = one_step([(x[:4], y[:4]), (x[4:], y[4:])], 2, tmp_path / "accumulated")
    assert close(together, accumulated)
    first_only = one_step([(x[:4], y[:4]), (x[4:], y[4:])], 1, tmp_path / "first")  # the check can fail
    assert not close(together, first_only)


def test_the_earlier_single_file_state_converts(tmp_path):
    clean, _ = train(ToyRecipe(str(tmp_path / "clean"), epochs=2))
    legacy = ToyRecipe(str(tmp_path / "legacy"), epochs=2)
    run = toy_run(replace(legacy, output_dir=str(tmp_path / "first")))
    history = run_training(run, ToyTask(0), Schedule(epochs=1), legacy, progress=False)
    # what the earlier epoch loop wrote after epoch 1: one file of state dicts and the torch RNG
    Path(legacy.output_dir).mkdir()
    torch.save({"model": run.trained.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(), "rng": torch.get_rng_state(), "epoch": 1,
                "history": history, "ema": None}, Path(legacy.output_dir) / LEGACY_STATE)
    (tmp_path / "first/recipe.json").rename(Path(legacy.output_dir) / "recipe.json")
    converted, history = train(legacy)
    assert [h["epoch"] for h in history] == [1, 2] and same(clean, converted)
    assert (Path(legacy.output_dir) / "checkpoints/epoch-0002").is_dir()


def test_a_run_resumes_only_under_the_recipe_it_started_with(tmp_path):
    recipe = ToyRecipe(str(tmp_path / "run"))
    with pytest.raises(Crash):
        train(recipe, crash_at=(1, 0))
    with pytest.raises(RecipeError, match=r"changed: lr: 0.05 -> 0.01"):
        train(replace(recipe, lr=0.01))
    run = toy_run(replace(recipe, lr=0.01))
    history = run_training(run, ToyTask(0), Schedule(epochs=3), replace(recipe, lr=0.01), progress=False,
                           resume_anyway=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_a_gpu_index_is_left_to_the_launcher():
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES|no CUDA GPU"):
        stage_accelerator("cuda:1", "no")


def on_two_processes(script: str, folder: Path) -> list[dict]:
    """Run ``script`` (it writes ``rank{k}.json`` into the folder given as its argument) under torchrun on two CPU
    processes; the two results, rank 0 first."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    path = folder / "script.py"
    path.write_text(script)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # CPU processes on a GPU machine too
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(path), str(folder)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((folder / f"rank{k}.json").read_text()) for k in (0, 1)]


DRAWS = """
import json
import sys
from pathlib import Path
import torch
from accelerate.utils import set_seed
from ecgllm.training.checkpoints import fresh_accelerator, seed_each_process
accelerator = fresh_accelerator(cpu=True)
set_seed(5)
alike = torch.rand(3).tolist()  # what every process drew before: the same masks on each
set_seed(5)
seed_each_process(accelerator, 5)
own = torch.rand(3).tolist()
Path(sys.argv[1], f"rank{accelerator.process_index}.json").write_text(json.dumps({"alike": alike, "own": own}))
"""


def test_under_torchrun_each_process_draws_its_own_dropout_and_one_process_keeps_its_stream(tmp_path):
    from accelerate.utils import set_seed

    from ecgllm.training.checkpoints import fresh_accelerator, seed_each_process

    ranks = on_two_processes(DRAWS, tmp_path)
    assert ranks[0]["alike"] == ranks[1]["alike"]  # the defect: one seed, the same draws on both processes
    assert ranks[0]["own"] != ranks[1]["own"]
    set_seed(5)
    before = torch.rand(3)
    set_seed(5)
    seed_each_process(fresh_accelerator(cpu=True), 5)
    assert torch.equal(torch.rand(3), before)  # a single process replays as before


SHARES = """
import json
import sys
from dataclasses import dataclass
from pathlib import Path
import torch
from torch import nn
from ecgllm.training.engine import Schedule, Task, prepare_run, run_training, stage_accelerator


@dataclass
class Recipe:
    output_dir: str


class Rows(Task):
    label, batches_per_epoch = "rows", 4
    seen = []

    def epoch_batches(self, epoch):
        order = torch.randperm(32, generator=torch.Generator().manual_seed(100 + epoch))
        for b in range(4):
            yield (order[8 * b:8 * (b + 1)].float()[:, None],)

    def loss(self, model, share):
        self.seen += [int(v) for v in share[0][:, 0]]
        return model(share[0]).square().mean()


accelerator = stage_accelerator("cpu", "no")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(1, 4), nn.Dropout(0.5), nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
out = Path(sys.argv[1], "run")
run = prepare_run(accelerator, model, optimizer, scheduler, out, 5)
task = Rows()
run_training(run, task, Schedule(max_steps=8, log_every=1), Recipe(str(out)), progress=False)
own = torch.rand(3).tolist()
Path(sys.argv[1], f"rank{accelerator.process_index}.json").write_text(json.dumps({"seen": task.seen, "own": own}))
"""


def test_under_torchrun_each_process_takes_its_share_of_every_batch_and_draws_its_own_dropout(tmp_path):
    """The engine on two processes: each batch's rows are shared out, so the processes take disjoint shares of one
    shuffled order, all of it, each epoch, and draw different dropout masks."""
    ranks = on_two_processes(SHARES, tmp_path)
    for epoch in range(2):
        shares = [set(r["seen"][16 * epoch:16 * (epoch + 1)]) for r in ranks]
        assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(32))
    assert ranks[0]["seen"][:16] != ranks[0]["seen"][16:]  # a new shuffle each epoch
    assert ranks[0]["own"] != ranks[1]["own"]


SEVEN_ROWS = """
import json
import sys
from pathlib import Path
import torch
from tests.test_epochs import one_step
from ecgllm.training.checkpoints import fresh_accelerator
generator = torch.Generator().manual_seed(3)
x, y = torch.randn(7, 4, generator=generator), torch.randn(7, 1, generator=generator)
weights = one_step([(x, y)], 1, Path(sys.argv[1], "run"))
rank = fresh_accelerator(cpu=True).process_index
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps({k: v.tolist() for k, v in weights.items()}))
"""


def test_two_processes_sharing_an_odd_batch_step_as_one_process_would(tmp_path):
    """Rows 4 and 3 on the two processes, each share's mean loss weighed by its rows: the step is the one of the
    whole batch's mean loss."""
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(7, 4, generator=generator), torch.randn(7, 1, generator=generator)
    alone = one_step([(x, y)], 1, tmp_path / "alone")
    root = Path(__file__).resolve().parents[1]
    ranks = on_two_processes(f"import sys\nsys.path.insert(0, {str(root)!r})\n" + SEVEN_ROWS, tmp_path)
    for rank in ranks:
        assert close(alone, {k: torch.tensor(v) for k, v in rank.items()})
