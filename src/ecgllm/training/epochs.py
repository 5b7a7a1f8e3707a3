"""The training engine of the epoch-based stages (encoder pretraining, contrastive pretraining, image distillation)
on HF Accelerate, like the language-model stages' loop (`ecgllm.training.loop`): the CPU, one GPU, or several
processes through torchrun / `accelerate launch` (gloo on CPUs), with bf16 autocast where a recipe asks for it.

A stage describes itself as an `EpochTask`: its batches of an epoch (drawn from a generator seeded by the seed and
the epoch, so a resumed run sees the same data), its loss, and its end-of-epoch metrics. The engine runs the epochs.
The recipe's batch size is the global one: each process takes its share of every batch, and the learning-rate
schedule steps once per batch whatever the number of processes. After every epoch it saves a checkpoint
(`checkpoints/epoch-NNNN/`: weights, optimizer, scheduler, the EMA if any, every RNG of every process), so a killed
run resumes bit-identically, and only under the recipe it started with."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from torch import nn

from ecgllm.errors import RecipeError
from ecgllm.training.checkpoints import (drop_metrics_after, finished_checkpoints, fresh_accelerator, read_state,
                                        save_checkpoint, seed_each_process)

MIXED_PRECISION = ("no", "bf16")
LEGACY_STATE = "checkpoint.pt"  # the single-file state of the hand-written epoch loops this engine replaced

Batch = tuple[torch.Tensor, ...]


class EpochTask(Protocol):
    label: str              # the progress bar's name of the stage
    steps_per_epoch: int

    def batches(self, epoch: int) -> Iterable[Batch]:
        """The whole (global) batches of epoch ``epoch`` (0-based), on the CPU."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The mean loss over this process's share of a batch, already on the run's device (the engine weighs it
        by the share's size)."""

    def metrics(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Extra entries of the metric history after epoch ``epoch`` (1-based), from the weights the stage scores
        (the EMA where there is one)."""


def epoch_accelerator(device: str, mixed_precision: str):
    """The Accelerator of an epoch-based stage from its recipe's ``device`` and ``mixed_precision``."""
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    from ecgllm.models.placement import bf16_supported, resolve_device

    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    if ":" in str(device):
        raise ValueError(f"device {device!r}: an epoch-based stage runs on 'cuda' and takes its GPU from the launcher "
                         "(CUDA_VISIBLE_DEVICES, or one per process under torchrun / accelerate launch)")
    placed = resolve_device(device)
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
class EpochRun:
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
                max_grad_norm: float | None = None) -> EpochRun:
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
    return EpochRun(accelerator, model, optimizer, scheduler, Path(out), ema, max_grad_norm)


def _resume(run: EpochRun, done: list[Path]) -> tuple[int, list[dict]]:
    """(epochs done, metric history) of the run folder's last complete checkpoint of ``done``; (0, []) for a new
    run."""
    if done:
        run.accelerator.load_state(str(done[-1]))
        state = read_state(done[-1])
        run.accelerator.print(f"resuming from {done[-1]} (epoch {state['epoch']})")
        return state["epoch"], state["history"]
    legacy = run.out / LEGACY_STATE
    if legacy.exists():  # a run the earlier loop left half-way: its state converts, its next checkpoint is new
        state = torch.load(legacy, weights_only=False, map_location="cpu")
        run.trained.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.scheduler.load_state_dict(state["scheduler"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        run.accelerator.print(f"resuming from {legacy} (epoch {state['epoch']}, the earlier single-file format)")
        return state["epoch"], state["history"]
    return 0, []


def run_epochs(run: EpochRun, task: EpochTask, epochs: int, recipe: Any, progress: bool = True,
               resume_anyway: bool = False) -> list[dict]:
    """Train ``epochs`` epochs of ``task`` (or those a resumed run still lacks); returns the metric history, one
    entry per epoch, also appended to ``metrics.jsonl`` in the run folder. ``recipe`` (the stage's config) is saved
    as ``recipe.json``; a run resumes only under the same one unless ``resume_anyway``."""
    from tqdm.auto import tqdm

    from ecgllm.training.config import check_resumable, resolved

    accelerator = run.accelerator
    checkpoints = finished_checkpoints(run.out / "checkpoints", "epoch")
    if checkpoints or (run.out / LEGACY_STATE).exists():
        check_resumable(run.out / "recipe.json", recipe, resume_anyway)
    done, history = _resume(run, checkpoints)
    if run.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "recipe.json").write_text(json.dumps(resolved(recipe), indent=2) + "\n")
        # an epoch is logged before its checkpoint is saved: a run killed between the two logged an epoch it trains
        # again now
        drop_metrics_after(run.out / "metrics.jsonl", "epoch", done)
    for epoch in range(done, epochs):
        run.model.train()
        started = time.time()
        losses = []
        bar = tqdm(task.batches(epoch), total=task.steps_per_epoch, desc=f"{task.label} {epoch + 1}/{epochs}",
                   disable=not (progress and run.is_main))
        world = accelerator.num_processes
        for batch in bar:
            if len(batch[0]) < world:  # a last batch too small to give every process a share (all skip it)
                continue
            share = tuple(t[accelerator.process_index::world].to(accelerator.device) for t in batch)
            # each process's mean loss, weighted by its share: the gradient is the whole batch's mean loss
            loss = task.loss(run.model, share) * (len(share[0]) * world / len(batch[0]))
            run.optimizer.zero_grad()
            accelerator.backward(loss)
            if run.max_grad_norm:
                accelerator.clip_grad_norm_(run.model.parameters(), run.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            if run.ema is not None:
                run.ema.update_parameters(run.trained)
            losses.append(loss.detach().float())
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{torch.stack(losses[-20:]).mean().item():.3f}")
        if not losses:
            raise RecipeError(f"epoch {epoch + 1}: no batch had a row for each of the {world} processes; the batch "
                              "size must be at least the number of processes")
        mean_loss = accelerator.reduce(torch.stack(losses).mean(), "mean").item()
        entry = {"epoch": epoch + 1, "loss": round(mean_loss, 5), "epoch_s": round(time.time() - started, 1)}
        with run.scored() as scored:
            entry |= task.metrics(scored, epoch + 1)
        history.append(entry)
        if run.is_main:
            with (run.out / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
        save_checkpoint(accelerator, run.out / "checkpoints", f"epoch-{epoch + 1:04d}",
                        {"epoch": epoch + 1, "history": history}, keep=1)
    return history
