"""Where the default checkpoint lives: ``$ECGLLM_MODEL`` when set, else the one shipped in the package."""

from __future__ import annotations

import os
from pathlib import Path

from ecgllm.errors import InputError

SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "checkpoint"


def default_checkpoint() -> Path | None:
    """The default checkpoint folder, or None when this installation has none."""
    override = os.environ.get("ECGLLM_MODEL")
    path = Path(override) if override else SHIPPED_CHECKPOINT
    return path if (path / "config.json").exists() else None


class NoDefaultModelError(InputError):
    """No model was given and no default checkpoint is installed."""


def resolve_model_dir(model: str | None) -> Path:
    """The given checkpoint folder, or the shipped default one."""
    if model:
        path = Path(model)
        if not (path / "config.json").exists():
            raise NoDefaultModelError(f"{path}: not an ecgllm checkpoint folder (no config.json); "
                                      f"give a folder written by `ecgllm train`.")
        return path
    path = default_checkpoint()
    if path is None:
        raise NoDefaultModelError("no default checkpoint is installed in this version of ecgllm; pass --model DIR "
                                  "(a folder written by `ecgllm train`).")
    return path


def load_checkpoint(model: str | None, device: str = "auto", dtype: str = "auto"):
    """``(model, processor, folder)``: the given checkpoint, or the default one, placed on ``device`` (``auto``:
    a CUDA GPU when PyTorch sees one) in ``dtype`` (``auto``: bf16 on a GPU that supports it, else fp32)."""
    from ecgllm.models.ecg_lm import EcgLanguageModel
    from ecgllm.models.processor import EcgProcessor
    from ecgllm.models.llm import quiet_transformers
    from ecgllm.models.statement_note import attach_statement_reader
    from ecgllm.models.placement import resolve_device, resolve_dtype

    folder = resolve_model_dir(model)
    placed = resolve_device(device)
    with quiet_transformers():  # a first run still says, in one line and one bar, that it prepares the LLM
        loaded = EcgLanguageModel.from_pretrained(folder, device=placed, dtype=resolve_dtype(dtype, placed))
    processor = EcgProcessor.from_pretrained(folder)
    attach_statement_reader(loaded, processor)
    return loaded, processor, folder
