from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PTBXL_1 = FIXTURES / "ptbxl/records100/00000/00001_lr.hea"

# Outside CI a checkout without ../shared skips these tests; under CI=true they run, and fail if it is missing.
needs_shared = pytest.mark.skipif(not SHARED.exists() and not os.environ.get("CI"),
                                  reason="../shared/data is not available")


@pytest.fixture
def ptbxl_signal() -> tuple[np.ndarray, float]:
    """Real 12-lead samples (PTB-XL ecg_id 1, 100 Hz) as [12, 1000] mV."""
    from ecgllm import read_ecg

    ecg = read_ecg(PTBXL_1)
    return ecg.signal.copy(), ecg.fs


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A tiny BPE tokenizer with a chat template (see tests/tiny_models.py); one per test module."""
    from tests.tiny_models import make_tiny_tokenizer

    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A saved untrained checkpoint (tiny Llama + LoRA + small ResNet): real loading code, fast."""
    import copy

    import torch

    from ecgllm.models import EcgLMConfig, ProcessorConfig
    from ecgllm.training.model_setup import build_model
    from tests.tiny_models import tiny_llm

    root = tmp_path_factory.mktemp("tinyckpt")
    tokenizer = copy.deepcopy(tiny_tokenizer)
    llm = tiny_llm(len(tokenizer))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    config = EcgLMConfig(llm=str(root / "llm"), encoder="resnet1d", encoder_kwargs={"widths": [8, 16], "n_tokens": 2},
                         lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})
    torch.manual_seed(0)
    model, processor = build_model(config, ProcessorConfig(), llm=tiny_llm(len(tokenizer)),
                                   tokenizer=tokenizer)
    model.save_pretrained(root / "ckpt", processor, name="tiny-test-model")
    return root / "ckpt"


def make_training_workspace(root: Path, tokenizer, n_conversations: int = 48) -> Path:
    """A prepared cache of the fixture PTB-XL records, generated conversations and a saved tiny LLM folder."""
    from ecgllm.datasets import PTBXL
    from ecgllm.datasets.cache import build_cache
    from ecgllm.datasets.conversation import write_jsonl
    from ecgllm.datasets.instruct import InstructBuilder
    from ecgllm.signal import PrepConfig
    from tests.tiny_models import tiny_llm

    # records of ECG-QA train patients: the split policy refuses to train on the other fixture records
    ptbxl = PTBXL.load(FIXTURES / "ptbxl_train")
    paths = [ptbxl.record_path(i, prefer_fs=100) for i in ptbxl.ecg_ids]
    build_cache(paths, ptbxl.table[["strat_fold"]].reset_index(), root / "cache",
                PrepConfig(fs=100.0, bandpass=None, window_s=10.0), "test", workers=1, progress=False)
    write_jsonl(InstructBuilder(ptbxl, ptbxl.ecg_ids).build(n_conversations, seed=0, split="train"),
                root / "train.jsonl")
    llm = tiny_llm(len(tokenizer))
    llm.save_pretrained(root / "tiny-llm")       # any local Hugging Face causal-LM folder works
    tokenizer.save_pretrained(root / "tiny-llm")
    return root


def bf16_training_recipe(workspace: Path, name: str) -> Path:
    """A six-step LLM stage under `mixed_precision: bf16` on a `make_training_workspace`, written as ``name``.yaml;
    its run folder is ``workspace / name``."""
    import yaml

    recipe = {"stage": "instruction", "output_dir": str(workspace / name), "mixed_precision": "bf16",
              "data": {"train": str(workspace / "train.jsonl"), "ecg_cache": str(workspace / "cache")},
              "model": {"llm": str(workspace / "tiny-llm"), "encoder": "resnet1d",
                        "encoder_kwargs": {"widths": [8, 16], "n_tokens": 4}, "llm_policy": "lora",
                        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"]}},
              "prep": {"fs": 100.0, "normalize": "zscore", "window_s": 10.0},
              "optim": {"lr": 0.002, "batch_size": 4, "max_steps": 6}, "save_every": 3, "log_every": 1}
    path = workspace / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def logged(run: Path) -> list[dict]:
    """The entries of a run folder's ``metrics.jsonl``, in order."""
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


KILL_SEED = 17  # draws where the resume tests kill a run: fixed, so a failure replays


def kill_once_written(command: list[str], target: Path, what: str, timeout_s: float = 300) -> None:
    """Start ``command`` and SIGKILL it as soon as ``target`` (a checkpoint) exists; fail if it ended first."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, f"the run finished before it could be killed {what}"
