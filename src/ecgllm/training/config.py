"""The language-model stages' recipe (`TrainConfig`), and the reading of any recipe file into its stage's typed
dataclass (`ecgllm.training.recipes` does the typing, overrides and resume checks)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ecgllm.errors import RecipeError
from ecgllm.models.configuration import EcgLMConfig
from ecgllm.signal.prepare import PrepConfig
from ecgllm.training.contrastive import ContrastiveConfig
from ecgllm.training.distill_image import ImageDistillConfig
from ecgllm.training.pretrain_encoder import EncoderPretrainConfig
from ecgllm.training.recipes import apply_overrides, build, read_yaml


@dataclass
class DataConfig:
    train: str                      # Conversation JSONL
    ecg_cache: str | None = None    # `ecgllm data prepare` folder holding the referenced records
    max_samples: int | None = None
    ptbxl: str | None = None        # PTB-XL metadata folder: fits model.signal_quality's noise heads
    # ECG-QA features of the cached records (`ecgllm data measure ptbxl --ecgqa-features`): model.measurement_note
    # reads them instead of measuring every ECG again (about 0.2 s each)
    measurements: str | None = None


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 100
    max_grad_norm: float = 1.0
    # Batches of conversations of similar length (training/data.py): far less padding for the same data.
    group_by_length: bool = True


DEBIAS_METHODS = ("none", "intervention", "ipw")


@dataclass
class TrainConfig:
    stage: str
    output_dir: str
    data: DataConfig
    model: EcgLMConfig = field(default_factory=EcgLMConfig)
    prep: PrepConfig = field(default_factory=PrepConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    # "bf16": autocast, with frozen weights cast once; faster on GPUs that support it and on CPUs with bf16
    # instructions (AVX512-BF16/AMX, `ecgllm.models.placement.cpu_has_bf16_instructions`), slower elsewhere
    mixed_precision: str = "no"
    # Backdoor adjustment for the severity confounder: "none", "intervention" (the loop is plain; every
    # conversation must have been drawn with `--intervention`, meta.sampling) or "ipw" (per-sample weights
    # P(s)/P(s|q), written by `ecgllm data debias`). "stratified" was removed (see `__post_init__`).
    debias: str = "none"
    init_from: str | None = None   # a previous stage's final/ folder: start from its encoder, projector, adapter

    def __post_init__(self) -> None:
        if self.debias == "stratified":
            raise ValueError("debias 'stratified' was removed: it gave the model the true severity stratum, a "
                             "function of the labels the answers come from, as an input in training; use 'ipw' or "
                             "'intervention'")
        if self.debias not in DEBIAS_METHODS:
            raise ValueError(f"debias must be one of {DEBIAS_METHODS}, got {self.debias!r}")
        if self.prep.crop == "random":  # the processor prepares every batch the same way: nothing to seed it
            raise ValueError("prep.crop 'random' is for encoder pretraining; a language-model stage crops 'start' "
                             "or 'center'")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16' (GPUs only), got {self.mixed_precision!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prep"] = self.prep.to_dict()
        return data


def load_encoder_recipe(path: str | Path, overrides: Sequence[str] = ()):
    """An ``encoder_pretraining`` recipe as `EncoderPretrainConfig`, an ``encoder_contrastive`` one as
    `ContrastiveConfig`, an ``image_distillation`` one as `ImageDistillConfig`."""
    raw = read_yaml(Path(path))
    stage = raw.pop("stage", "encoder_pretraining")
    cls = {"encoder_contrastive": ContrastiveConfig, "image_distillation": ImageDistillConfig}.get(
        stage, EncoderPretrainConfig)
    return build(cls, apply_overrides(raw, overrides, str(path), cls), str(path))


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe (see ``recipes/``) into a `TrainConfig`, with ``KEY=VALUE`` overrides."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides, str(path), TrainConfig)
    for key in ("stage", "output_dir", "data"):
        if key not in raw:
            raise RecipeError(f"{path}: missing required key '{key}'")
    return build(TrainConfig, raw, str(path))
