"""Device and precision: the same code runs on the CPU here and on a GPU (bf16) elsewhere. Without a GPU these
tests check the CPU side of every path: device names, bf16 weights at inference, bf16 autocast in training."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ecgllm import read_ecg
from ecgllm.datasets.conversation import ecg_tags
from ecgllm.models.answering import prompt_batch
from ecgllm.models.placement import resolve_device, resolve_dtype
from ecgllm.training.engine import stage_accelerator
from tests.conftest import FIXTURES, bf16_training_recipe, logged, make_training_workspace

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
        stage_accelerator("cuda", "no")


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("cuda:x")
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="mixed_precision must be"):
        stage_accelerator("cpu", "fp8")
    with pytest.raises(ValueError, match="mixed_precision fp16 needs a CUDA GPU"):
        stage_accelerator("cpu", "fp16")


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
    batches = [prompt_batch(a.model, a.processor, [question], [a.read([PTBXL_1])], [ecg_tags(1, False)])
               for a in (fp32, bf16)]
    logits = [a.model(**b).logits[0, -1].float() for a, b in zip((fp32, bf16), batches)]
    assert torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=0) > 0.99


def test_llm_training_with_bf16_mixed_precision(tmp_path, tiny_tokenizer):
    """`mixed_precision: bf16` runs through Accelerate's autocast (on the CPU here), learns, and saves fp32."""
    from ecgllm.training.llm_stage import train
    from ecgllm.training.config import load_recipe

    workspace = make_training_workspace(tmp_path, tiny_tokenizer, n_conversations=16)
    final = train(load_recipe(bf16_training_recipe(workspace, "bf16")), progress=False)
    losses = [m["loss"] for m in logged(workspace / "bf16")]
    assert len(losses) == 6 and all(np.isfinite(losses))
    from safetensors.torch import load_file

    from ecgllm.models.model_folder import part_state

    assert {t.dtype for t in part_state(final, "projector").values()} == {torch.float32}
    # the frozen weights were cast to bf16 for the steps, yet the checkpoints keep float32 ones to resume from
    saved = load_file(workspace / "bf16/checkpoints/step-00000006/model.safetensors")
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float32}


def test_frozen_weights_cast_once_give_the_numbers_of_autocast(tiny_tokenizer):
    """Training under bf16 autocast with the frozen linear weights cast ahead (`FrozenWeightsCast`) gives the
    loss and gradients of plain autocast exactly; the tied output head (an embedding) is left alone; leaving puts
    the very float32 tensors back; `original()` shows them for a while (to save a checkpoint)."""
    from ecgllm.models.placement import FrozenWeightsCast
    from tests.test_models import QA, make

    model, processor = make(tiny_tokenizer)
    model.train()
    batch = processor([QA, QA], [[read_ecg(PTBXL_1)], [read_ecg(PTBXL_1)]])
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads():
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        grads = [p.grad.clone() for p in trainable]
        model.zero_grad()
        return loss.detach(), grads

    frozen = [p for n, p in model.llm.named_parameters() if not p.requires_grad and "layers.0." in n and "proj" in n]
    before = {id(p): p.data_ptr() for p in frozen}
    autocast_loss, autocast_grads = loss_and_grads()
    cast = FrozenWeightsCast(model)
    assert cast.count > 0
    with cast:
        assert all(p.dtype == torch.bfloat16 for p in frozen)
        assert model.llm.get_input_embeddings().weight.dtype == torch.float32
        with cast.original():
            assert all(p.data_ptr() == before[id(p)] for p in frozen)
        cast_loss, cast_grads = loss_and_grads()
    assert torch.equal(cast_loss, autocast_loss)
    assert all(torch.equal(a, b) for a, b in zip(cast_grads, autocast_grads))
    assert all(p.data_ptr() == before[id(p)] and p.dtype == torch.float32 for p in frozen)
    assert FrozenWeightsCast(model, enabled=False).count == 0


def test_llms_load_on_pytorchs_own_kernels_never_on_kernels_fetched_from_the_hub(tmp_path, tiny_tokenizer,
                                                                                 monkeypatch):
    """transformers 5 kernelizes a model loaded with its defaults once it runs on a GPU, fetching the kernels from
    the Hugging Face Hub (offline: an error at the first training step); ecgllm never downloads."""
    from transformers import AutoModelForCausalLM

    from ecgllm.models.llm import load_llm
    from tests.tiny_models import tiny_llm

    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)  # the library's default, unless the environment says no
    tiny_llm(len(tiny_tokenizer)).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path)).use_kernels  # the library's default
    model, _ = load_llm(str(tmp_path))
    assert model.use_kernels is False
