"""Training throughput and answer latency of the default ECG-LLM (SmolLM2-135M-Instruct + LoRA) on CPU.

    python benchmarks/bench_llm_speed.py [--ptbxl DIR] [--model DIR]

Real ECG-QA-style questions from the generator on ECG-QA train ECGs (PTB-XL, 100 Hz), fp32, measured for two
models in the same run:
- the shipped default checkpoint (what `ecgllm ask` runs; 4 projected + 6 label tokens per ECG, frozen
  encoder): a training step of the stage that made it (LoRA, projector, label-token confidences), and answers
  that stop at the end-of-turn token, as in use -> the top-level keys;
- a freshly built model with 16 projected tokens per ECG and a trained encoder, forced to 8 new tokens (the
  length-controlled measure of earlier runs) -> "fixed_8_tokens".
Writes benchmarks/results/llm_speed.json: train_samples_per_s, answer_latency_median_s / _p95_s,
tokens_per_ecg, llm, and the sequence lengths used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, environment, ptbxl_wfdb_dir, write_result  # noqa: E402

from ecgllm import read_ecg  # noqa: E402
from ecgllm.datasets import ECGQA, PTBXL  # noqa: E402
from ecgllm.datasets.ecgqa_attributes import build_attributes  # noqa: E402
from ecgllm.datasets.ecgqa_generator import ECGQAGenerator  # noqa: E402
from ecgllm.models import EcgLanguageModel, EcgLMConfig  # noqa: E402

ENCODER = {"widths": [48, 96, 128, 192], "n_tokens": 16, "blocks_per_stage": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", help="PTB-XL root with records100/ (default: unpack the shared pack once)")
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--model", metavar="DIR", help="checkpoint to time (default: the shipped one)")
    args = parser.parse_args()
    torch.manual_seed(0)
    ptbxl = PTBXL.load(SHARED / "ptbxl", records_root=ptbxl_wfdb_dir(args.ptbxl))
    qa = ECGQA(SHARED / "ecgqa/ecgqa")
    samples = ECGQAGenerator(build_attributes(ptbxl), qa.split_ecg_ids("train")).generate(
        8 * (args.train_steps + 1) + args.questions, seed=0)
    ecg = {i: read_ecg(ptbxl.record_path(i, prefer_fs=100)) for s in samples for i in s["ecg_id"]}

    def convo(s, with_answer=True):
        turns = [{"role": "user", "content": s["question"]}]
        if with_answer:
            turns.append({"role": "assistant", "content": ", ".join(s["answer"])})
        return turns

    def train_steps(model, processor) -> tuple[float, list[int]]:
        """Median seconds per batch-8 training step (the first step warms up) and the sequence lengths."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        model.train()
        lengths, times = [], []
        for step in range(args.train_steps + 1):
            chunk = samples[8 * step: 8 * (step + 1)]
            batch = processor([convo(s) for s in chunk], [[ecg[i] for i in s["ecg_id"]] for s in chunk])
            lengths += batch["attention_mask"].sum(1).tolist()
            t0 = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step:
                times.append(time.perf_counter() - t0)
        model.eval()
        return float(np.median(times)), lengths

    def latency(seconds: list[float]) -> dict:
        return {"answer_latency_median_s": round(float(np.median(seconds)), 3),
                "answer_latency_p95_s": round(float(np.percentile(seconds, 95)), 3)}

    questions = samples[-args.questions:]

    # 1. the shipped default checkpoint, as `ecgllm ask` runs it
    from ecgllm.models.default import resolve_model_dir
    from ecgllm.serving.assistant import ECGAssistant

    shipped_dir = resolve_model_dir(args.model)
    shipped, processor = EcgLanguageModel.from_pretrained(shipped_dir)
    for name, p in shipped.llm.named_parameters():  # the adapter loads frozen for inference; train it here
        p.requires_grad_("lora_" in name)
    step_s, lengths = train_steps(shipped, processor)
    assistant = ECGAssistant(shipped, processor, str(shipped_dir))
    seconds, new_tokens = [], []
    for s in questions:
        records = [ecg[i] for i in s["ecg_id"]]
        t0 = time.perf_counter()
        answer = (assistant.ask(records[0], s["question"], max_new_tokens=8, measure=False) if len(records) == 1
                  else assistant.compare(*records, s["question"], max_new_tokens=8, measure=False))
        seconds.append(time.perf_counter() - t0)
        new_tokens.append(len(processor.tokenizer(answer.text)["input_ids"]) + 1)  # + the end-of-turn token
    result = {"model": "shipped default checkpoint", "checkpoint": str(shipped_dir.relative_to(ROOT))
              if shipped_dir.is_relative_to(ROOT) else str(shipped_dir),
              "llm": "SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised to fp32)",
              "policy": "LoRA r=16 on q,k,v,o; encoder frozen; projector and label tokens trained",
              "encoder": shipped.config.encoder, "tokens_per_ecg": shipped.tokens_per_ecg,
              "train_batch_size": 8, "train_samples_per_s": round(8 / step_s, 2), "train_step_s_median": round(step_s, 3),
              "train_sequence_tokens_mean": round(float(np.mean(lengths)), 1),
              "train_sequence_tokens_max": int(max(lengths)), **latency(seconds),
              "answer_new_tokens_mean": round(float(np.mean(new_tokens)), 1),
              "answers_stop_at": "the end-of-turn token (at most 8 new tokens)"}
    del shipped, assistant

    # 2. a fresh model with 16 projected tokens per ECG, always 8 new tokens (length-controlled)
    torch.manual_seed(0)
    model, processor = EcgLanguageModel.build(EcgLMConfig(encoder_kwargs=ENCODER))
    step_s, lengths = train_steps(model, processor)
    seconds = []
    for s in questions:
        t0 = time.perf_counter()
        prompt = processor([convo(s, False)], [[ecg[i] for i in s["ecg_id"]]], train=False)
        model.generate(**prompt, max_new_tokens=8, min_new_tokens=8)
        seconds.append(time.perf_counter() - t0)
    result["fixed_8_tokens"] = {"policy": "LoRA r=16 on q,k,v,o + encoder trained", "encoder_kwargs": ENCODER,
                                "tokens_per_ecg": model.encoder.n_tokens, "train_samples_per_s": round(8 / step_s, 2),
                                "train_sequence_tokens_mean": round(float(np.mean(lengths)), 1), **latency(seconds),
                                "answer_new_tokens": 8}
    write_result("llm_speed.json", {
        **result, "goal_answer_latency_s": 0.3,
        "latency_includes": "ECG preparation + tokenisation + encoder + greedy decoding (batch 1)",
        "dtype": "float32", "threads": torch.get_num_threads(),
        "command": "python benchmarks/bench_llm_speed.py", **environment(),
    })


if __name__ == "__main__":
    main()
