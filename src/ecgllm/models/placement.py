"""Where a model runs and in which precision: the CPU here, a CUDA GPU when PyTorch sees one, bf16 where that
GPU supports it; and frozen weights cast once for bf16 mixed-precision training (training stages place themselves
through Accelerate: `ecgllm.training.llm_stage`, `ecgllm.training.engine`). The same code and recipes run on both;
nothing requires a GPU."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


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


def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there bf16 matrix products run about 2×
    the speed of fp32; elsewhere they are emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell cheaply, so no claim
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


class FrozenWeightsCast:
    """Frozen linear weights stored in a lower precision for the span of a bf16-autocast training run.

    Autocast casts a float32 weight to bf16 on every call: for a 135M LLM whose weights are frozen under LoRA,
    that reads 0.5 GB and writes 0.25 GB per forward and again per backward, each step. Casting once ahead gives
    the same numbers (the same round-to-nearest), without the copies. Only frozen ``nn.Linear`` weights move;
    weights shared with an embedding (a tied output head) stay, as embedding lookups are not autocast.
    ``original()`` puts the float32 tensors back for a while (to save a checkpoint); leaving puts them back for
    good, so nothing after training sees the cast. Both precisions are held meanwhile (half as much memory again
    for the frozen weights), so switching between them only exchanges tensors."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16, enabled: bool = True) -> None:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        self._swaps: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for module in model.modules() if enabled else ():
            if not isinstance(module, torch.nn.Linear):
                continue
            for param in (module.weight, module.bias):
                if param is not None and not param.requires_grad and param.dtype != dtype and id(param) not in skip:
                    skip.add(id(param))  # a weight shared by two layers moves once
                    self._swaps.append((param, param.data, param.data.to(dtype)))

    @property
    def count(self) -> int:
        return len(self._swaps)

    def _use(self, low: bool) -> None:
        for param, full, reduced in self._swaps:
            param.data = reduced if low else full

    def __enter__(self) -> "FrozenWeightsCast":
        self._use(True)
        return self

    def __exit__(self, *exc) -> None:
        self._use(False)

    @contextlib.contextmanager
    def original(self):
        self._use(False)
        try:
            yield
        finally:
            self._use(True)


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it, fp32 on a CPU (where the shipped model's answers were validated,
    bf16 instructions or not)."""
    name = (name or "auto").strip().lower()
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return DTYPES[name]
