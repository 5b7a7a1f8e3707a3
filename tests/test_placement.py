"""Device and precision: the same code runs on the CPU here and on a GPU (bf16) elsewhere. Without a GPU these
tests check the CPU side of every path: device names, bf16 weights at inference, bf16 autocast in training."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from ecgllm.models.placement import Placement, resolve_device, resolve_dtype
from tests.conftest import FIXTURES, make_training_workspace

PTBXL_1 = FIXTURES / "ptbxl/records100/00000/00001_lr.hea"
NO_GPU = not torch.cuda.is_available()


def test_auto_device_and_dtype_follow_the_hardware():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # no fast bf16 on CPUs
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_device("CPU") == torch.device("cpu")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error_not_a_silent_cpu_run():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Placement.resolve("cuda:0")


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("cuda:x")
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="mixed_precision"):
        Placement.resolve("cpu", "fp16")


def test_cli_dtype_choices_are_the_placement_dtypes():
    from ecgllm.models.placement import DTYPES
    from ecgllm.serving.cli_ask import DTYPE_NAMES

    assert sorted(DTYPE_NAMES) == sorted(DTYPES)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cli_device_flag_is_validated_before_loading(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "ask", str(PTBXL_1), "Is this normal?",
                             "--device", "cuda"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "no CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_bf16_weights_answer_like_fp32(tiny_checkpoint):
    """A checkpoint loaded in bf16 (what `--dtype auto` picks on a GPU) reads fp32 batches and answers."""
    from ecgllm import ECGAssistant

    fp32 = ECGAssistant.load(tiny_checkpoint, device="cpu", dtype="float32")
    bf16 = ECGAssistant.load(tiny_checkpoint, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    question = "Does this ECG show atrial fibrillation?"
    assert isinstance(bf16.ask(PTBXL_1, question, max_new_tokens=4, measure=False).text, str)
    # the first generated token's scores agree across precisions (tiny random model: compare distributions)
    batches = [a._batch([question], [a.read([PTBXL_1])], False) for a in (fp32, bf16)]
    logits = [a.model(**b).logits[0, -1].float() for a, b in zip((fp32, bf16), batches)]
    assert torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=0) > 0.99


def test_llm_training_with_bf16_mixed_precision(tmp_path, tiny_tokenizer):
    """`mixed_precision: bf16` runs through Accelerate's autocast (on the CPU here), learns, and saves fp32."""
    from ecgllm.training.loop import train
    from ecgllm.training.config import load_recipe

    workspace = make_training_workspace(tmp_path, tiny_tokenizer, n_conversations=16)
    recipe = {"stage": "instruction", "output_dir": str(workspace / "bf16"), "mixed_precision": "bf16",
              "data": {"train": str(workspace / "train.jsonl"), "ecg_cache": str(workspace / "cache")},
              "model": {"llm": str(workspace / "tiny-llm"), "encoder": "resnet1d",
                        "encoder_kwargs": {"widths": [8, 16], "n_tokens": 4}, "llm_policy": "lora",
                        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"]}},
              "prep": {"fs": 100.0, "normalize": "zscore", "window_s": 10.0},
              "optim": {"lr": 0.002, "batch_size": 4, "max_steps": 6}, "save_every": 3, "log_every": 1}
    (workspace / "bf16.yaml").write_text(yaml.safe_dump(recipe))
    final = train(load_recipe(workspace / "bf16.yaml"), progress=False)
    losses = [yaml.safe_load(line)["loss"] for line in (workspace / "bf16/metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(np.isfinite(losses))
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(final / "projector.safetensors").values()} == {torch.float32}
