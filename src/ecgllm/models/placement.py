"""Where a model runs and in which precision: the CPU here, a CUDA GPU when PyTorch sees one, bf16 where that
GPU supports it. The same code and recipes run on both; nothing requires a GPU."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}
MIXED_PRECISION = ("no", "bf16")


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto``: the first CUDA GPU if PyTorch sees one, else the CPU. ``cuda`` (or ``cuda:N``) without a GPU
    is an error that says so, not a silent fall-back."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES:
        raise ValueError(f"device must be one of auto, cpu, cuda or cuda:N, got {name!r}")
    try:
        device = torch.device(name)
    except RuntimeError:  # e.g. "cuda:x"
        raise ValueError(f"device must be one of auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device {name!r}: PyTorch sees no CUDA GPU here (this PyTorch is {build}); "
                             f"use device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    return device


def to_model_device(batch: dict, model: torch.nn.Module) -> dict:
    """A processor batch with its tensors moved to the device the model's weights are on."""
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it, fp32 elsewhere (this CPU has no fast bf16)."""
    name = (name or "auto").strip().lower()
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return DTYPES[name]


@dataclass(frozen=True)
class Placement:
    """The device of an epoch-based training stage and whether its forward passes autocast to bf16."""

    device: torch.device
    mixed_precision: str = "no"

    @classmethod
    def resolve(cls, device: str | None = "auto", mixed_precision: str = "no") -> "Placement":
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
        placed = resolve_device(device)
        if mixed_precision == "bf16" and placed.type == "cuda" and not bf16_supported(placed):
            raise ValueError("mixed_precision bf16: this GPU does not support bfloat16; use 'no'")
        return cls(placed, mixed_precision)

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the stage's device (CPU autocast works too, just without a speed-up here)."""
        if self.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
