"""One training loop for every stage, on HF Accelerate (CPU, one GPU, or several via `accelerate launch`
/ torchrun). Checkpoints are atomic (written to a temporary folder, then renamed) and hold model, optimizer,
scheduler and RNG states plus the step, so a killed run resumes with exactly the same batches and ends
with bit-identical weights."""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ecgllm.models.placement import FrozenWeightsCast
from ecgllm.training.checkpoints import (STATE_FILE, drop_metrics_after, finished_checkpoints, fresh_accelerator,
                                        read_state, save_checkpoint, seed_each_process)
from ecgllm.training.config import RecipeError, TrainConfig, check_resumable, resolved

if TYPE_CHECKING:
    from ecgllm.training.data import ConversationDataset


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The run's last complete checkpoint (``checkpoints/step-N``), if any."""
    done = finished_checkpoints(output_dir / "checkpoints", "step")
    return done[-1] if done else None


def _inherited(config: TrainConfig) -> list[str | None]:
    return [config.model.encoder_init, config.init_from, config.model.image_encoder_init]


def _check_measurement_table(config: TrainConfig, dataset: ConversationDataset) -> None:
    """A measurement table without notes to read it is a recipe mistake; notes without a table (or a table that
    lacks records) still train, measuring those ECGs in the loop (about 0.2 s each), which is said once."""
    if config.data.measurements and not config.model.measurement_note:
        raise RecipeError(f"data.measurements ({config.data.measurements}) is set but model.measurement_note is "
                          "not: nothing would read the table; set model.measurement_note to a note version (2) or "
                          "drop the table")
    if not config.model.measurement_note:
        return
    from ecgllm.models.measurement_note import asks_for_measurements
    from ecgllm.models.processor import first_question

    known = dataset.measurements
    noted = [row for row in dataset.rows if asks_for_measurements(first_question(row["turns"]))]
    missing = {int(e["record_id"]) for row in noted for e in row["ecgs"]} - set(known)
    if missing:
        where = (f"{len(missing)} records not in {config.data.measurements}" if config.data.measurements
                 else "no data.measurements table")
        print(f"note: model.measurement_note with {where}: their notes are measured during training (about 0.2 s "
              f"per ECG); `ecgllm data measure ptbxl --ecgqa-features` writes the table", file=sys.stderr, flush=True)


def _dataset_and_model(config: TrainConfig, llm=None, tokenizer=None, fit_quality: bool = True,
                       announce: bool = True):
    """The stage's training data (refusing records of ECG-QA valid/test patients) and its model at the start
    of training: built from the recipe, with the weights of ``init_from`` when it names an earlier stage.
    ``fit_quality``: fit the signal-quality heads and named-label priors that ``init_from`` did not bring (False
    where a checkpoint of this run will replace the weights: resuming, exporting)."""
    from ecgllm.datasets.cache import ECGCache
    from ecgllm.datasets.split_policy import inherited_stages
    from ecgllm.models.processor import ProcessorConfig
    from ecgllm.training.data import ConversationDataset
    from ecgllm.training.model_setup import build_model, load_stage_weights

    if config.data.ecg_cache is None:
        raise ValueError("data.ecg_cache is required (build one with `ecgllm data prepare`)")
    inherited_stages(_inherited(config))  # a start trained under another split policy stops here, not at the end
    dataset = ConversationDataset(config.data.train, ECGCache.open(config.data.ecg_cache), config.data.max_samples,
                                  stage=config.stage, measurements=config.data.measurements)
    if config.debias == "intervention":
        other = [i for i, row in enumerate(dataset.rows) if row.get("meta", {}).get("sampling") != "intervention"]
        if other:
            raise RecipeError(f"debias: intervention, but {len(other)} of {len(dataset.rows)} conversations in "
                              f"{config.data.train} were not drawn by intervention sampling (meta.sampling; the "
                              f"first is line {dataset.line_numbers[other[0]]}); generate them with "
                              f"`ecgllm data generate ecgqa --intervention`")
    if config.debias == "ipw":
        unweighted = [i for i, row in enumerate(dataset.rows) if row.get("meta", {}).get("ipw_weight") is None]
        if unweighted:
            raise RecipeError(f"debias: ipw, but {len(unweighted)} of {len(dataset.rows)} conversations in "
                              f"{config.data.train} have no meta.ipw_weight (the first is line "
                              f"{dataset.line_numbers[unweighted[0]]}; run `ecgllm data debias` on it)")
    _check_measurement_table(config, dataset)
    model, processor = build_model(config.model, ProcessorConfig(prep=config.prep.to_dict()),
                                   llm=llm, tokenizer=tokenizer, init_from=config.init_from)
    if config.init_from:
        load_stage_weights(model, config.init_from, processor)
    quality = model.label_tokens.quality if model.label_tokens is not None else None
    if quality is not None:
        try:
            quality.check_rate(processor.prep.fs, f"model.signal_quality from {config.init_from} (this recipe's prep.fs)")
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
    loaded: list = []  # PTB-XL's metadata, read once for whichever fit below needs it

    def ptbxl(purpose: str):
        if config.data.ptbxl is None:
            raise RecipeError(f"{purpose}: set data.ptbxl to the PTB-XL folder (ptbxl_database.csv)")
        if not loaded:
            from ecgllm.datasets.ptbxl import PTBXL

            loaded.append(PTBXL.load(config.data.ptbxl))
        return loaded[0]

    if quality is not None and not quality.fitted and fit_quality:  # once, on this stage's own training records
        from ecgllm.training.signal_quality import fit_for_stage

        summary = fit_for_stage(quality, dataset.ptbxl_record_ids(), dataset.cache, processor,
                                ptbxl("model.signal_quality fits its noise heads on PTB-XL's noise columns"))
        if announce:
            print(summary, flush=True)
        model.label_tokens.set_quality_names(processor.tokenizer, model.llm.get_input_embeddings())
    if config.model.balanced_named_labels and not model.label_tokens.priors_fitted and fit_quality:
        from ecgllm.training.label_priors import fit_for_stage as fit_priors_for_stage

        summary = fit_priors_for_stage(model.label_tokens, model.label_vocab, dataset.ptbxl_record_ids(),
                                       ptbxl("model.balanced_named_labels counts each label's share of the training "
                                             "records in PTB-XL's labels"))
        if announce:
            print(summary, flush=True)
    return dataset, model, processor


def _write_model_folder(folder: Path, config: TrainConfig, model, processor, dataset, name: str) -> Path:
    """A self-contained model folder (what `--model` reads) with the records every stage behind it trained on,
    and the name servers show for it."""
    from ecgllm.datasets.split_policy import write_training_records
    from ecgllm.models.card import cache_files, write_artifact_card

    model.save_pretrained(folder, processor, name=name)
    write_training_records(folder, config.stage, dataset.ptbxl_record_ids(), inherited=_inherited(config))
    data = [config.data.train, *([config.data.measurements] if config.data.measurements else []),
            *cache_files(config.data.ecg_cache)]
    write_artifact_card(folder, "language_model", json.loads(json.dumps(processor.config.prep)), model.label_vocab,
                        getattr(model.encoder, "pool_mode", None), resolved(config), data)
    return folder


def export_checkpoint(config: TrainConfig, step: int, llm=None, tokenizer=None) -> Path:
    """Turn the run's checkpoint of ``step`` (Accelerate state: weights, optimizer, RNG) into a model folder,
    ``<output_dir>/step-<N>/``, so intermediate checkpoints can be evaluated for model selection."""
    from safetensors.torch import load_file

    output_dir = Path(config.output_dir)
    source = output_dir / "checkpoints" / f"step-{step:08d}"
    if not (source / STATE_FILE).exists():
        done = [str(int(p.name.split("-")[1])) for p in finished_checkpoints(output_dir / "checkpoints", "step")]
        raise RecipeError(f"{output_dir}: no finished checkpoint of step {step}; there are: "
                          f"{', '.join(done) or 'none'}")
    if not (source / "model.safetensors").exists():
        raise RecipeError(f"{source}: no model.safetensors (a sharded FSDP/DeepSpeed state cannot be exported here)")
    dataset, model, processor = _dataset_and_model(config, llm, tokenizer, fit_quality=False)  # weights come below
    # A multi-process run saves its wrapped model: strip DDP's and torch.compile's prefixes.
    state = {name.removeprefix("module.").removeprefix("_orig_mod."): tensor
             for name, tensor in load_file(source / "model.safetensors").items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: the recipe changed since the run
        raise RecipeError(f"{source}: its weights do not fit the recipe's model ({str(exc).splitlines()[-1]})") from None
    # safetensors stores a tied tensor once: the output projection shares the input embedding's storage.
    current = model.state_dict()
    loaded = {t.untyped_storage().data_ptr() for name, t in current.items() if name not in missing}
    tied = {name for name in missing if current[name].untyped_storage().data_ptr() in loaded}
    if unexpected or set(missing) - tied:
        raise RecipeError(f"{source}: its weights do not fit the recipe's model (missing "
                          f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return _write_model_folder(output_dir / f"step-{step}", config, model, processor, dataset,
                               name=f"{output_dir.resolve().name}/step-{step}")


def random_states() -> dict:
    """Every random state a training step draws from (Python, NumPy, PyTorch's CPU and GPU generators)."""
    import random

    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_random_states(states: dict) -> None:
    import random

    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state_all(states["cuda"])


def prepare_for_processes(accelerator, seed: int, model, optimizer, loader, scheduler) -> tuple:
    """Accelerate's ``prepare``, then each process's own seed: the loader's shuffle is fixed at ``prepare`` from the
    seed every process shares (so the processes split one order of batches), and what is drawn after (dropout)
    differs per process. Seeding each process before ``prepare`` would give each another order."""
    prepared = accelerator.prepare(model, optimizer, loader, scheduler)
    seed_each_process(accelerator, seed)
    return prepared


def lr_factor(step: int, warmup: int, max_steps: int) -> float:
    """The learning rate's share after ``step`` optimizer steps: linear warm-up, then a cosine to 0."""
    warmup = max(warmup, 0)
    if step < warmup:
        return (step + 1) / warmup
    done = (step - warmup) / max(1, max_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def train(config: TrainConfig, llm=None, tokenizer=None, progress: bool = True, resume_anyway: bool = False) -> Path:
    """Run (or resume) a training stage; returns the folder of the final model. A run resumes only under the
    recipe it was started with (``resume_anyway`` continues under a changed one)."""
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ecgllm.training.data import LengthGroupedBatchSampler, make_collate, token_lengths

    output_dir = Path(config.output_dir)
    recipe = resolved(config)  # the recipe as given, saved beside the run for resuming
    if latest_checkpoint(output_dir) is not None:
        check_resumable(output_dir / "recipe.json", config, resume_anyway)
    # cpu=True is how Accelerate recognises a torchrun/`accelerate launch` run without GPUs (gloo backend).
    accelerator = fresh_accelerator(cpu=not torch.cuda.is_available(),
                                    gradient_accumulation_steps=config.optim.grad_accum,
                                    mixed_precision=config.mixed_precision,
                                    dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(config.seed)
    resuming = latest_checkpoint(output_dir) is not None  # its state brings fitted heads
    dataset, model, processor = _dataset_and_model(config, llm, tokenizer, fit_quality=not resuming,
                                                   announce=progress and accelerator.is_main_process)
    collate = make_collate(processor, config.debias)
    if config.optim.group_by_length:
        sampler = LengthGroupedBatchSampler(token_lengths(dataset, processor), config.optim.batch_size, config.seed)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    else:
        loader = DataLoader(dataset, batch_size=config.optim.batch_size, shuffle=True, collate_fn=collate,
                            num_workers=0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    # Accelerate steps a prepared scheduler once per process at each optimizer step (each process reads its own
    # batches): the schedule counts optimizer steps, whatever the number of processes.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda count: lr_factor(
        count // accelerator.num_processes, config.optim.warmup_steps, config.optim.max_steps))
    model, optimizer, loader, scheduler = prepare_for_processes(accelerator, config.seed, model, optimizer, loader,
                                                                scheduler)

    step = 0
    resume = latest_checkpoint(output_dir)
    resumed_random = None
    if resume is not None:
        accelerator.load_state(str(resume))
        step = read_state(resume)["step"]
        accelerator.print(f"resuming from {resume} (step {step})")
        # The random states as the run left them at that step, put back once the resumed epoch's iterator exists:
        # creating it draws one number from torch's generator (the DataLoader's base seed), which the killed run
        # drew before it saved, so the dropout masks that follow are the killed run's.
        resumed_random = random_states()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    metrics_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        drop_metrics_after(metrics_path, "step", step)  # a killed run logged past its checkpoint: those steps run again

    micro_per_epoch = len(loader)
    # Accelerate also syncs at the end of the loader, so a short last group still makes a step.
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.optim.grad_accum))
    bar = tqdm(total=config.optim.max_steps, initial=step, unit="step", desc=config.stage,
               disable=not (progress and accelerator.is_main_process))
    model.train()
    started = time.time()
    # bf16 autocast casts every frozen weight on every call; cast once instead (same numbers, fewer copies)
    frozen = FrozenWeightsCast(accelerator.unwrap_model(model), enabled=config.mixed_precision == "bf16")
    with frozen:
        while step < config.optim.max_steps:
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            loader.set_epoch(epoch)
            batches = loader
            if done_in_epoch:  # a resumed epoch: the batches already done are skipped by index, not built
                resumed_epoch = iter(accelerator.skip_first_batches(loader, done_in_epoch * config.optim.grad_accum))
                batches = itertools.chain([next(resumed_epoch)], resumed_epoch)  # its iterator has drawn its number
            if resumed_random is not None:
                set_random_states(resumed_random)
                resumed_random = None
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.optim.max_grad_norm:
                        accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                if step % config.log_every == 0 or step == config.optim.max_steps:
                    mean_loss = accelerator.gather(loss.detach()).mean().item()
                    if accelerator.is_main_process:
                        with metrics_path.open("a") as fh:
                            fh.write(json.dumps({"step": step, "loss": round(mean_loss, 5),
                                                 "lr": scheduler.get_last_lr()[0],
                                                 "elapsed_s": round(time.time() - started, 2)}) + "\n")
                        bar.set_postfix(loss=f"{mean_loss:.3f}")
                if step % config.save_every == 0 or step == config.optim.max_steps:
                    with frozen.original():  # checkpoints hold the float32 weights a resumed run loads
                        save_checkpoint(accelerator, output_dir / "checkpoints", f"step-{step:08d}", {"step": step},
                                        config.keep_checkpoints)
                if step >= config.optim.max_steps:
                    break
    bar.close()
    final = output_dir / "final"
    if accelerator.is_main_process:
        _write_model_folder(final, config, accelerator.unwrap_model(model), processor, dataset,
                            name=output_dir.resolve().name)
    accelerator.wait_for_everyone()
    return final
