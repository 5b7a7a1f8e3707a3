"""The CUDA side of every path, run where PyTorch sees a GPU (skipped elsewhere; the CPU side of the same paths is
tested in test_placement.py): answering in bf16 on the GPU, an LLM stage trained there under bf16 autocast whose
checkpoint answers on a CPU, and a bf16 training step through the training engine's Accelerator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgllm import read_ecg
from ecgllm.datasets.conversation import ecg_tags
from ecgllm.models.answering import prompt_batch
from tests.conftest import FIXTURES, bf16_training_recipe, logged, make_training_workspace

PTBXL_1 = FIXTURES / "ptbxl/records100/00000/00001_lr.hea"
QUESTION = "Does this ECG show atrial fibrillation?"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def first_token_logits(assistant) -> torch.Tensor:
    batch = prompt_batch(assistant.model, assistant.processor, [QUESTION], [assistant.read([PTBXL_1])], [ecg_tags(1, False)])
    with torch.no_grad():
        return assistant.model(**batch).logits[0, -1].float().cpu()


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs bf16")
def test_auto_placement_answers_on_the_gpu_in_bf16_like_the_cpu_in_fp32(tiny_checkpoint):
    from ecgllm import ECGAssistant

    gpu = ECGAssistant.load(tiny_checkpoint)  # device auto, dtype auto
    cpu = ECGAssistant.load(tiny_checkpoint, device="cpu", dtype="float32")
    assert {p.device.type for p in gpu.model.parameters()} == {"cuda"}
    assert {p.dtype for p in gpu.model.parameters()} == {torch.bfloat16}
    assert isinstance(gpu.ask(PTBXL_1, QUESTION, max_new_tokens=4, measure=False).text, str)
    similarity = torch.nn.functional.cosine_similarity(first_token_logits(gpu), first_token_logits(cpu), dim=0)
    assert similarity > 0.99


def test_an_llm_stage_trains_on_the_gpu_under_bf16_and_its_checkpoint_answers_on_a_cpu(tmp_path, tiny_tokenizer):
    from ecgllm.models.model_folder import part_state

    from ecgllm import ECGAssistant
    from ecgllm.training.config import load_recipe
    from ecgllm.training.llm_stage import train

    workspace = make_training_workspace(tmp_path, tiny_tokenizer, n_conversations=16)
    recipe = bf16_training_recipe(workspace, "gpu")
    torch.cuda.reset_peak_memory_stats()
    final = train(load_recipe(recipe), progress=False)
    assert torch.cuda.max_memory_allocated() > 0  # the steps ran on the GPU
    losses = [m["loss"] for m in logged(workspace / "gpu")]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert {t.dtype for t in part_state(final, "projector").values()} == {torch.float32}
    assert {t.device.type for t in part_state(final, "projector").values()} == {"cpu"}
    on_cpu = ECGAssistant.load(final, device="cpu", dtype="float32")
    assert isinstance(on_cpu.ask(PTBXL_1, QUESTION, max_new_tokens=4, measure=False).text, str)


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs bf16")
def test_a_training_step_through_the_engines_accelerator_runs_on_the_gpu_under_bf16():
    """The Accelerator every stage gets (`stage_accelerator`) places an encoder and head on the GPU; a
    step under its autocast gives a finite float32 loss and float32 gradients there (the stages' own loops are
    not run here)."""
    from ecgllm.models.encoders import build_encoder
    from ecgllm.signal import PrepConfig, prepare
    from ecgllm.training.engine import stage_accelerator

    accelerator = stage_accelerator("cuda", "bf16")
    assert accelerator.device.type == "cuda"
    encoder = build_encoder("resnet1d", n_leads=12, widths=[8, 16], n_tokens=4)
    head = torch.nn.Linear(encoder.dim, 5)
    model, optimizer = accelerator.prepare(torch.nn.Sequential(encoder, head), torch.optim.AdamW(
        list(encoder.parameters()) + list(head.parameters()), lr=1e-3))
    signal = torch.as_tensor(prepare(read_ecg(PTBXL_1), PrepConfig(fs=100.0, window_s=10.0)).signal)[None]
    with accelerator.autocast():
        features = model[0](signal.to(accelerator.device).repeat(4, 1, 1))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model[1](encoder.pool(features)).float(), torch.ones(4, 5, device=accelerator.device))
    accelerator.backward(loss)
    optimizer.step()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(p.grad is not None and p.grad.device.type == "cuda" and p.grad.dtype == torch.float32
               for p in encoder.parameters() if p.requires_grad)
