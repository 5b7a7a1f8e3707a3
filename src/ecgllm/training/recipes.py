"""Typed recipes, whatever the stage: YAML mapped onto a stage's dataclass with errors that name the bad key,
command-line overrides, the resolved recipe a run saves, and the check that a run resumes only under it.

Values are checked against the dataclasses' annotations by pydantic: ``lr: 2e-4`` (a string to YAML 1.1) becomes
the number it means, ``batch_size: 8.5`` or ``lr: fast`` stop with the key's dotted name. Any key can be overridden
from the command line (``ecgllm train RECIPE --optim.lr 1e-4``); the run saves the resolved recipe, and resuming
under a different one stops with the difference (`check_resumable`). The stages' own dataclasses live with them;
this module imports none of them (`ecgllm.training.config` maps a recipe file onto its stage's).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Sequence, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import TypeAdapter, ValidationError

from ecgllm.errors import RecipeError
from ecgllm.models.removed_features import without_removed_keys


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


def build(cls, values: dict[str, Any], where: str):
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
        before = resolved(build(type(config), saved, str(saved_path)))
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


def read_yaml(path: Path) -> dict[str, Any]:
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
    raw = read_yaml(Path(path))
    if "stage" not in raw:
        raise RecipeError(f"{path}: missing required key 'stage'")
    return str(raw["stage"])
