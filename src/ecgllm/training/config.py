"""Training recipes: YAML files mapped onto dataclasses, with errors that name the bad key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ecgllm.errors import InputError

from ecgllm.models.ecg_lm import EcgLMConfig
from ecgllm.signal.prepare import PrepConfig


class RecipeError(InputError):
    """A recipe is missing a key, has an unknown one, or a value of the wrong kind."""


@dataclass
class DataConfig:
    train: str                      # Conversation JSONL
    ecg_cache: str | None = None    # `ecgllm data prepare` folder holding the referenced records
    max_samples: int | None = None


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


DEBIAS_METHODS = ("none", "intervention", "ipw", "stratified")


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
    mixed_precision: str = "no"    # "bf16" on GPUs that support it (CPU autocast works too, without a speed-up)
    # Backdoor adjustment for the severity confounder: "none", "intervention" (the data was generated with
    # `--intervention`; the loop itself is plain), "ipw" (per-sample weights P(s)/P(s|q)) or "stratified"
    # (severity embedding, marginalised over P(s) at inference); ipw/stratified need `ecgllm data debias`.
    debias: str = "none"
    init_from: str | None = None   # a previous stage's final/ folder: start from its encoder, projector, adapter

    def __post_init__(self) -> None:
        if self.debias not in DEBIAS_METHODS:
            raise ValueError(f"debias must be one of {DEBIAS_METHODS}, got {self.debias!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16' (GPUs only), got {self.mixed_precision!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prep"] = self.prep.to_dict()
        return data


def _build(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise RecipeError(f"{where}: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe not found") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys")
    return dict(raw)


def recipe_stage(path: str | Path) -> str:
    raw = _read_yaml(Path(path))
    if "stage" not in raw:
        raise RecipeError(f"{path}: missing required key 'stage'")
    return str(raw["stage"])


def load_encoder_recipe(path: str | Path):
    """An ``encoder_pretraining`` recipe as `EncoderPretrainConfig`, an ``encoder_contrastive`` one as
    `ContrastiveConfig`, an ``image_distillation`` one as `ImageDistillConfig`."""
    from ecgllm.training.contrastive import ContrastiveConfig
    from ecgllm.training.distill_image import ImageDistillConfig
    from ecgllm.training.pretrain_encoder import EncoderPretrainConfig

    raw = _read_yaml(Path(path))
    stage = raw.pop("stage", "encoder_pretraining")
    cls = {"encoder_contrastive": ContrastiveConfig, "image_distillation": ImageDistillConfig}.get(
        stage, EncoderPretrainConfig)
    return _build(cls, raw, str(path))


def load_recipe(path: str | Path) -> TrainConfig:
    """Read a YAML recipe (see ``recipes/``) into a `TrainConfig`."""
    path = Path(path)
    raw = _read_yaml(path)
    for key in ("stage", "output_dir", "data"):
        if key not in raw:
            raise RecipeError(f"{path}: missing required key '{key}'")
    nested = {"data": DataConfig, "model": EcgLMConfig, "prep": PrepConfig, "optim": OptimConfig}
    for key, cls in nested.items():
        if key in raw:
            raw[key] = _build(cls, raw[key], f"{path}: {key}")
    return _build(TrainConfig, raw, str(path))
