"""The language-model stages: their data and model at the start, their `Task` for the training engine
(`ecgllm.training.engine`), and their model folders (the final one, and any checkpoint exported for model
selection). A killed run resumes from its last step checkpoint with exactly the same batches and ends with
bit-identical weights (on the CPU)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ecgllm.errors import RecipeError
from ecgllm.training.checkpoints import STATE_FILE, finished_checkpoints
from ecgllm.training.config import TrainConfig
from ecgllm.training.engine import Schedule, Task, prepare_run, run_training, stage_accelerator
from ecgllm.training.recipes import resolved

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
    if processor.statement_reader is not None:  # after the start's weights: its frozen classifier writes the notes
        dataset.read_statements(processor.statement_reader)
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


class ConversationTask(Task):
    """The language-model stages' `Task`: each batch is a list of conversation indices (of similar token length, or
    shuffled), and each process makes its share into tensors with the processor."""

    def __init__(self, dataset: ConversationDataset, processor, config: TrainConfig) -> None:
        from ecgllm.training.data import make_collate, token_lengths

        self.dataset, self.collate = dataset, make_collate(processor, config.debias)
        self.label, self.seed, self.batch_size = config.stage, config.seed, config.optim.batch_size
        self.lengths = token_lengths(dataset, processor) if config.optim.group_by_length else None
        self.batches_per_epoch = math.ceil(len(dataset) / self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        from ecgllm.training.data import length_grouped_batches

        if self.lengths is not None:
            return length_grouped_batches(self.lengths, self.batch_size, self.seed, epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]

    def rows(self, batch: list[int]) -> int:
        return len(batch)

    def share(self, batch: list[int], index: int, world: int, device: torch.device) -> dict[str, Any]:
        collated = self.collate([self.dataset[i] for i in batch[index::world]])
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collated.items()}

    def loss(self, model, share: dict[str, Any]) -> torch.Tensor:
        return model(**share).loss


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
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir)
    accelerator = stage_accelerator("auto", config.mixed_precision)
    if config.optim.batch_size < accelerator.num_processes:
        raise RecipeError(f"optim.batch_size {config.optim.batch_size} is the whole batch, shared out among the "
                          f"{accelerator.num_processes} processes: give at least {accelerator.num_processes}")
    set_seed(config.seed)
    resuming = latest_checkpoint(output_dir) is not None  # its state brings fitted heads
    dataset, model, processor = _dataset_and_model(config, llm, tokenizer, fit_quality=not resuming,
                                                   announce=progress and accelerator.is_main_process)
    task = ConversationTask(dataset, processor, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda count: lr_factor(
        count, config.optim.warmup_steps, config.optim.max_steps))
    run = prepare_run(accelerator, model, optimizer, scheduler, output_dir, config.seed,
                      max_grad_norm=config.optim.max_grad_norm)
    schedule = Schedule(max_steps=config.optim.max_steps, save_every=config.save_every, log_every=config.log_every,
                        keep=config.keep_checkpoints, grad_accum=config.optim.grad_accum)
    run_training(run, task, schedule, config, progress, resume_anyway)
    final = output_dir / "final"
    if run.is_main:
        _write_model_folder(final, config, run.trained, processor, dataset, name=output_dir.resolve().name)
    accelerator.wait_for_everyone()
    return final
