"""The training engine of every stage (encoder pretraining, contrastive pretraining, image distillation and the
language-model stages) on HF Accelerate: the CPU, one GPU, or several processes through torchrun / `accelerate
launch` (gloo on CPUs), with bf16 autocast where a recipe asks for it (frozen weights cast once, not at every call).

A stage describes itself as a `Task`: its batches of an epoch (drawn from a generator seeded by the seed and the
epoch, so a resumed run sees the same data), each process's share of a batch, its loss, and its end-of-epoch
metrics. The engine runs the optimizer steps under a `Schedule`: a number of epochs (a metrics line and a checkpoint
after each) or of optimizer steps (a loss line every ``log_every`` steps, a checkpoint every ``save_every``). The
recipe's batch size is the global one: each process takes its share of every batch, and the learning-rate schedule
steps once per optimizer step whatever the number of processes. A checkpoint (`checkpoints/epoch-NNNN/` or
`checkpoints/step-NNNNNNNN/`: weights, optimizer, scheduler, the EMA if any, every RNG of every process) lets a
killed run resume bit-identically, and only under the recipe it started with."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ecgllm.errors import RecipeError
from ecgllm.training.checkpoints import (drop_metrics_after, finished_checkpoints, fresh_accelerator, read_state,
                                        save_checkpoint, seed_each_process)
from ecgllm.training.recipes import check_resumable, resolved

MIXED_PRECISION = ("no", "bf16", "fp16")
# in every step checkpoint: those of the language-model stages' earlier loop (before this engine) counted the
# schedule per process and the batch size per process, so they resume here only when asked to
STEP_FORMAT = 2
LEGACY_STATE = "checkpoint.pt"  # the single-file state of the hand-written epoch loops this engine replaced


class Task:
    """What a stage trains on and how; the engine does the rest. Batches are tuples of tensors by default (their
    rows are shared out among the processes); a stage whose batches are something else overrides `rows` and
    `share`."""

    label: str = "training"     # the progress bar's name of the stage
    batches_per_epoch: int = 0

    def epoch_batches(self, epoch: int) -> Iterable[Any]:
        """The whole (global) batches of epoch ``epoch`` (0-based), on the CPU."""
        raise NotImplementedError

    def batches(self, epoch: int, start: int = 0) -> Iterable[Any]:
        """The batches of epoch ``epoch`` from its batch ``start`` on (a run that checkpoints by steps resumes
        inside an epoch); a stage that can skip batches without making them overrides this."""
        return itertools.islice(self.epoch_batches(epoch), start, None)

    def rows(self, batch: Any) -> int:
        return len(batch[0])

    def share(self, batch: Any, index: int, world: int, device: torch.device) -> Any:
        """Process ``index`` of ``world``'s rows of a batch, on its device."""
        return tuple(t[index::world].to(device) for t in batch)

    def loss(self, model: nn.Module, share: Any) -> torch.Tensor:
        """The mean loss over this process's share of a batch (the engine weighs it by the share's size)."""
        raise NotImplementedError

    def metrics(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Extra entries of the metric history after epoch ``epoch`` (1-based), from the weights the stage scores
        (the EMA where there is one)."""
        return {}


@dataclass(frozen=True)
class Schedule:
    """How long a run trains and when it writes: ``epochs`` (a metrics line, with the task's metrics, and a
    checkpoint after each epoch) or ``max_steps`` optimizer steps (a loss line every ``log_every`` steps, a
    checkpoint every ``save_every`` steps, the newest ``keep`` kept). ``grad_accum`` batches make one step."""

    epochs: int | None = None
    max_steps: int | None = None
    save_every: int = 0
    log_every: int = 0
    keep: int = 1
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("a schedule counts either epochs or max_steps")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be at least 1, got {self.grad_accum}")

    @property
    def by_steps(self) -> bool:
        return self.max_steps is not None

    def steps_per_epoch(self, task: Task) -> int:
        """Optimizer steps of an epoch: a short last group of batches still makes a step (its gradient is the mean
        over the batches it has)."""
        if task.batches_per_epoch < 1:
            raise RecipeError(f"{task.label}: an epoch has no batch (too little training data for one batch)")
        return math.ceil(task.batches_per_epoch / self.grad_accum)

    def total_steps(self, task: Task) -> int:
        return self.max_steps if self.by_steps else self.epochs * self.steps_per_epoch(task)


def stage_accelerator(device: str, mixed_precision: str):
    """The Accelerator of a stage from its recipe's ``device`` (``auto``: a GPU where PyTorch sees one) and
    ``mixed_precision``."""
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    from ecgllm.models.placement import bf16_supported, resolve_device

    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    if ":" in str(device):
        raise ValueError(f"device {device!r}: a stage runs on 'cuda' and takes its GPU from the launcher "
                         "(CUDA_VISIBLE_DEVICES, or one per process under torchrun / accelerate launch)")
    placed = resolve_device(device)
    if mixed_precision == "fp16" and placed.type != "cuda":
        raise ValueError("mixed_precision fp16 needs a CUDA GPU; on a CPU use 'bf16' or 'no'")
    if mixed_precision == "bf16" and placed.type == "cuda" and not bf16_supported(placed):
        raise ValueError("mixed_precision bf16: this GPU does not support bfloat16; use 'no'")
    # split_batches: each process takes a share of the recipe's batch, and the schedule steps once per batch.
    # The timeout: the other processes wait while the main one renders pages or scores fold 10 (tens of minutes on
    # a CPU), longer than the process group's default of 10 minutes (NCCL).
    accelerator = fresh_accelerator(cpu=placed.type == "cpu", mixed_precision=mixed_precision,
                                    dataloader_config=DataLoaderConfiguration(split_batches=True),
                                    kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=4))])
    if accelerator.device.type != placed.type:
        raise ValueError(f"device {device!r}: this process already runs on {accelerator.device} (one device per "
                         "process; start a new process for another)")
    return accelerator


@dataclass
class Run:
    """A run's Accelerator and its prepared (possibly wrapped) model, optimizer and scheduler."""

    accelerator: Any
    model: nn.Module
    optimizer: Any
    scheduler: Any
    out: Path
    ema: nn.Module | None = None
    max_grad_norm: float | None = None

    @property
    def trained(self) -> nn.Module:
        """The model's own module (without a DistributedDataParallel wrapper)."""
        return self.accelerator.unwrap_model(self.model)

    @contextlib.contextmanager
    def scored(self):
        """The weights a stage scores and saves (the exponential moving average where there is one), run in float32:
        the bf16 autocast Accelerate wraps around the trained module's forward is lifted meanwhile (it relies on
        Accelerate keeping the module's own forward as ``_original_forward``)."""
        if self.ema is not None:
            yield self.ema.module
            return
        module = self.trained
        wrapped, original = module.__dict__.get("forward"), module.__dict__.get("_original_forward")
        if wrapped is None or original is None:  # no mixed precision: nothing wraps the forward
            yield module
            return
        module.forward = original
        try:
            yield module
        finally:
            module.forward = wrapped

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def prepare_run(accelerator, model: nn.Module, optimizer, scheduler, out: Path, seed: int, ema_decay: float = 0.0,
                max_grad_norm: float | None = None) -> Run:
    """Place the model and wrap it, its optimizer and scheduler for the accelerator; ``seed``: the run's (each
    process then draws its own dropout from it); ``ema_decay`` > 0 keeps an exponential moving average of the
    weights (part of every checkpoint)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = model.to(accelerator.device)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
           if ema_decay else None)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # the stages draw their batches from (seed, epoch) generators, the same on every process
    seed_each_process(accelerator, seed)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    return Run(accelerator, model, optimizer, scheduler, Path(out), ema, max_grad_norm)


def _resume(run: Run, schedule: Schedule, task: Task, resume_anyway: bool) -> tuple[int, list[dict]]:
    """(optimizer steps done, metric history) of the run folder's last complete checkpoint; (0, []) for a new run."""
    unit = "step" if schedule.by_steps else "epoch"
    done = finished_checkpoints(run.out / "checkpoints", unit)
    if done:
        state = read_state(done[-1])
        if schedule.by_steps and state.get("format") != STEP_FORMAT and not resume_anyway:
            raise RecipeError(f"{done[-1]} was written before step checkpoints recorded their format, by a loop "
                              "that counted the learning-rate schedule and the batch size per process: start a new "
                              "output_dir, or pass --resume-anyway to continue from it (a single-process run "
                              "continues on the same schedule; the flag also lets a changed recipe resume)")
        run.accelerator.load_state(str(done[-1]))
        run.accelerator.print(f"resuming from {done[-1]} ({unit} {state[unit]})")
        if schedule.by_steps:
            return state["step"], []
        return state["epoch"] * schedule.steps_per_epoch(task), state["history"]
    legacy = run.out / LEGACY_STATE
    if legacy.exists() and not schedule.by_steps:  # a run the earlier epoch loop left half-way: its state converts
        state = torch.load(legacy, weights_only=False, map_location="cpu")
        run.trained.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.scheduler.load_state_dict(state["scheduler"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        run.accelerator.print(f"resuming from {legacy} (epoch {state['epoch']}, the earlier single-file format)")
        return state["epoch"] * schedule.steps_per_epoch(task), state["history"]
    return 0, []


def run_training(run: Run, task: Task, schedule: Schedule, recipe: Any, progress: bool = True,
                 resume_anyway: bool = False) -> list[dict]:
    """Train ``task`` under ``schedule`` (or what a resumed run still lacks); returns the metric history of an epoch
    schedule, one entry per epoch (every schedule appends its lines to ``metrics.jsonl`` in the run folder).
    ``recipe`` (the stage's config) is saved as ``recipe.json``; a run resumes only under the same one unless
    ``resume_anyway``."""
    from tqdm.auto import tqdm

    from ecgllm.models.placement import FrozenWeightsCast

    accelerator = run.accelerator
    unit = "step" if schedule.by_steps else "epoch"
    if finished_checkpoints(run.out / "checkpoints", unit) or (run.out / LEGACY_STATE).exists():
        check_resumable(run.out / "recipe.json", recipe, resume_anyway)
    step, history = _resume(run, schedule, task, resume_anyway)
    per_epoch, total = schedule.steps_per_epoch(task), schedule.total_steps(task)
    metrics_path = run.out / "metrics.jsonl"
    if run.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "recipe.json").write_text(json.dumps(resolved(recipe), indent=2) + "\n")
        # a line is logged before its checkpoint is saved: a run killed between the two logged what it trains again
        drop_metrics_after(metrics_path, unit, step if schedule.by_steps else step // per_epoch)
    world = accelerator.num_processes
    bar = tqdm(total=total, initial=step, unit="step", desc=task.label, disable=not (progress and run.is_main))
    started = time.time()
    # bf16 autocast casts every frozen weight on every call; cast once instead (same numbers, fewer copies)
    frozen = FrozenWeightsCast(run.trained, enabled=accelerator.mixed_precision == "bf16")
    with frozen:
        while step < total:
            epoch, done_in_epoch = divmod(step, per_epoch)
            run.model.train()
            epoch_started, epoch_losses = time.time(), []
            group: list[Any] = []
            batches = iter(task.batches(epoch, done_in_epoch * schedule.grad_accum))
            for batch in batches:
                group.append(batch)
                through = done_in_epoch * schedule.grad_accum + len(group)  # the epoch's batches used so far
                if len(group) < schedule.grad_accum and through < task.batches_per_epoch:
                    continue
                loss = _optimizer_step(run, task, group, world)
                group = []
                done_in_epoch += 1
                step += 1
                bar.update(1)
                if loss is not None:
                    epoch_losses.append(loss)
                    if not bar.disable:  # .item() waits for the GPU: only where the bar shows it
                        bar.set_postfix(loss=f"{loss.item():.3f}")
                if schedule.by_steps:
                    if schedule.log_every and (step % schedule.log_every == 0 or step == total):
                        _log_step(run, metrics_path, step, loss, started)
                    if (schedule.save_every and step % schedule.save_every == 0) or step == total:
                        with frozen.original():  # checkpoints hold the float32 weights a resumed run loads
                            save_checkpoint(accelerator, run.out / "checkpoints", f"step-{step:08d}",
                                            {"step": step, "format": STEP_FORMAT},
                                            schedule.keep)
                if step >= total or done_in_epoch >= per_epoch:
                    break
            if not schedule.by_steps:
                with frozen.original():
                    history.append(_end_epoch(run, task, epoch, epoch_losses, epoch_started, metrics_path))
                    save_checkpoint(accelerator, run.out / "checkpoints", f"epoch-{epoch + 1:04d}",
                                    {"epoch": epoch + 1, "history": history}, keep=schedule.keep)
    bar.close()
    return history


def _optimizer_step(run: Run, task: Task, group: list[Any], world: int) -> torch.Tensor | None:
    """One optimizer step over a group of batches (gradient accumulation); the step's mean loss, or None when no
    batch had a row for every process (all processes skip it)."""
    accelerator = run.accelerator
    usable = [batch for batch in group if task.rows(batch) >= world]
    losses = []
    for k, batch in enumerate(usable):
        share = task.share(batch, accelerator.process_index, world, accelerator.device)
        rows = task.rows(batch)
        # each process's mean loss, weighted by its share: the gradient is the whole batch's mean loss
        weight = len(range(accelerator.process_index, rows, world)) * world / rows
        syncing = k == len(usable) - 1  # the processes exchange gradients once per step
        with contextlib.nullcontext() if syncing else accelerator.no_sync(run.model):
            loss = task.loss(run.model, share) * weight
            accelerator.backward(loss / len(usable))
        losses.append(loss.detach().float())
    if not losses:
        return None
    if run.max_grad_norm:
        accelerator.clip_grad_norm_(run.model.parameters(), run.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad()
    if run.ema is not None:
        run.ema.update_parameters(run.trained)
    return torch.stack(losses).mean()


def _log_step(run: Run, metrics_path: Path, step: int, loss: torch.Tensor | None, started: float) -> None:
    if loss is None:
        return
    mean_loss = run.accelerator.reduce(loss.to(run.accelerator.device), "mean").item()
    if run.is_main:
        with metrics_path.open("a") as fh:
            fh.write(json.dumps({"step": step, "loss": round(mean_loss, 5), "lr": run.scheduler.get_last_lr()[0],
                                 "elapsed_s": round(time.time() - started, 2)}) + "\n")


def _end_epoch(run: Run, task: Task, epoch: int, losses: list[torch.Tensor], started: float,
               metrics_path: Path) -> dict:
    """The metric history's entry of epoch ``epoch`` (0-based), logged by the main process."""
    if not losses:
        raise RecipeError(f"epoch {epoch + 1}: no batch had a row for each of the {run.accelerator.num_processes} "
                          "processes; the batch size must be at least the number of processes")
    mean_loss = run.accelerator.reduce(torch.stack(losses).mean().to(run.accelerator.device), "mean").item()
    entry = {"epoch": epoch + 1, "loss": round(mean_loss, 5), "epoch_s": round(time.time() - started, 1)}
    with run.scored() as scored:
        entry |= task.metrics(scored, epoch + 1)
    if run.is_main:
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
    return entry
