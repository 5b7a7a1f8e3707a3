"""Training recipes: YAML files mapped onto typed dataclasses, with errors that name the bad key.

Values are checked against the dataclasses' annotations by pydantic: ``lr: 2e-4`` (a string to YAML 1.1) becomes
the number it means, ``batch_size: 8.5`` or ``lr: fast`` stop with the key's dotted name. Any key can be overridden
from the command line (``ecgllm train RECIPE --optim.lr 1e-4``); the run saves the resolved recipe, and resuming
under a different one stops with the difference (`check_resumable`).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Sequence, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import TypeAdapter, ValidationError

from ecgllm.errors import RecipeError
from ecgllm.models.configuration import EcgLMConfig
from ecgllm.models.removed_features import without_removed_keys
from ecgllm.signal.prepare import PrepConfig
from ecgllm.training.contrastive import ContrastiveConfig
from ecgllm.training.distill_image import ImageDistillConfig
from ecgllm.training.pretrain_encoder import EncoderPretrainConfig


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


def _check_keys(cls, values: Any, where: str, prefix: str = "") -> None:
    """Unknown keys, at any depth of nested dataclasses, are errors (pydantic would drop them silently)."""
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: {prefix.rstrip('.') or 'the recipe'}: expected a mapping, got "
                          f"{type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(prefix + k for k in unknown)}; allowed here: {', '.join(sorted(known))}")
    hints = get_type_hints(cls)
    for name, value in values.items():
        if is_dataclass(hints.get(name)) and isinstance(hints[name], type):
            _check_keys(hints[name], value, where, f"{prefix}{name}.")


def _build(cls, values: dict[str, Any], where: str):
    """``values`` as a ``cls``, nested dataclasses included, each value checked against its annotation."""
    _check_keys(cls, values, where)
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            given = f" (got {error['input']!r})" if error["type"] not in ("missing", "value_error") else ""
            problems.append(f"{key + ': ' if key else ''}{message}{given}")
        raise RecipeError(f"{where}: " + "; ".join(problems)) from None


def _field(cls: Any, name: str) -> tuple[Any, Any]:
    """``(annotation, default)`` of dataclass ``cls``'s field ``name``; ``(None, None)`` when there is none."""
    if not (isinstance(cls, type) and is_dataclass(cls)):
        return None, None
    for f in fields(cls):
        if f.name == name:
            default = f.default_factory() if f.default_factory is not MISSING else \
                None if f.default is MISSING else f.default
            return get_type_hints(cls)[name], default
    return None, None


def _is_text(annotation: Any) -> bool:
    """``str`` or ``str | None``: an override for it is taken as written (YAML would read "no" as false)."""
    if annotation is str:
        return True
    return get_origin(annotation) in (Union, UnionType) and set(get_args(annotation)) <= {str, type(None)}


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], where: str, cls: Any = None) -> dict[str, Any]:
    """``["optim.lr=1e-4", ...]`` set into a copy of the raw recipe of dataclass ``cls``. Values are read as YAML
    (numbers, lists, ``null``) except for text fields, then typed like any recipe value. A section the recipe
    does not have starts from its default, so ``model.lora.r=8`` keeps the other LoRA settings."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"{where}: override {item!r} is not KEY=VALUE (e.g. --optim.lr 1e-4)")
        node, owner = out, cls
        parts = key.strip().split(".")
        for part in parts[:-1]:
            annotation, default = _field(owner, part)
            if part not in node:
                node[part] = copy.deepcopy(default) if isinstance(default, dict) else {}
            node, owner = node[part], annotation
            if not isinstance(node, dict):
                raise RecipeError(f"{where}: override {key}: {part} is not a section of the recipe")
        annotation, _ = _field(owner, parts[-1])
        if _is_text(annotation) and not (text.strip() in ("null", "~") and annotation is not str):
            value: Any = text.strip()
        else:
            try:
                value = yaml.safe_load(text) if text.strip() else text
            except yaml.YAMLError:
                value = text
        node[parts[-1]] = value
    return out


def resolved(config: Any) -> dict[str, Any]:
    """The recipe as JSON data (what a run saves as recipe.json)."""
    import json

    data = config.to_dict() if hasattr(config, "to_dict") else asdict(config)
    return json.loads(json.dumps(data, default=str))


def check_resumable(saved_path: Path, config: Any, resume_anyway: bool = False) -> None:
    """A run resumes only under the recipe it started with: otherwise stop and name every changed key (the
    schedule, data and model of the first part would silently differ from the rest)."""
    import json

    if resume_anyway or not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    if isinstance(saved.get("model"), dict):  # a run from before a model feature was removed, at its "off" value
        saved["model"] = without_removed_keys(saved["model"], str(saved_path))
    try:  # typed like the recipe: a key added since the run started is its default, "2e-4" is a number
        before = resolved(_build(type(config), saved, str(saved_path)))
    except RecipeError:
        before = saved
    now = resolved(config)
    changes = [f"{key}: {old!r} -> {new!r}" for key, old, new in _differences(before, now)]
    if changes:
        raise RecipeError(f"{saved_path.parent} was started under another recipe; changed: " + "; ".join(changes)
                          + ". Use a new output_dir, restore the recipe, or pass --resume-anyway")


def _differences(before: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now)):
            out += _differences(before.get(key), now.get(key), f"{prefix}{key}.")
        return out
    return [] if before == now else [(prefix.rstrip("."), before, now)]


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


def load_encoder_recipe(path: str | Path, overrides: Sequence[str] = ()):
    """An ``encoder_pretraining`` recipe as `EncoderPretrainConfig`, an ``encoder_contrastive`` one as
    `ContrastiveConfig`, an ``image_distillation`` one as `ImageDistillConfig`."""
    raw = _read_yaml(Path(path))
    stage = raw.pop("stage", "encoder_pretraining")
    cls = {"encoder_contrastive": ContrastiveConfig, "image_distillation": ImageDistillConfig}.get(
        stage, EncoderPretrainConfig)
    return _build(cls, apply_overrides(raw, overrides, str(path), cls), str(path))


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe (see ``recipes/``) into a `TrainConfig`, with ``KEY=VALUE`` overrides."""
    path = Path(path)
    raw = apply_overrides(_read_yaml(path), overrides, str(path), TrainConfig)
    for key in ("stage", "output_dir", "data"):
        if key not in raw:
            raise RecipeError(f"{path}: missing required key '{key}'")
    return _build(TrainConfig, raw, str(path))
