"""Training throughput and answer latency of the default ECG-LLM (SmolLM2-135M-Instruct + LoRA) on CPU.

    python benchmarks/bench_llm_speed.py [--ptbxl DIR]

Real ECG-QA-style questions from the generator on ECG-QA train ECGs (PTB-XL, 100 Hz), fp32.
Writes benchmarks/results/llm_speed.json: train_samples_per_s (batch 8, LoRA r=16, encoder trained),
answer_latency_median_s / _p95_s (one question, greedy, up to 8 new tokens), tokens_per_ecg, llm,
and the sequence lengths used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, environment, ptbxl_wfdb_dir, write_result  # noqa: E402

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

    model, processor = EcgLanguageModel.build(EcgLMConfig(encoder_kwargs=ENCODER))
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
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    model.eval()
    latencies, answer_tokens = [], []
    for s in samples[-args.questions:]:
        t0 = time.perf_counter()
        prompt = processor([convo(s, False)], [[ecg[i] for i in s["ecg_id"]]], train=False)
        out = model.generate(**prompt, max_new_tokens=8)
        latencies.append(time.perf_counter() - t0)
        answer_tokens.append(int(out.shape[1]))
    write_result("llm_speed.json", {
        "llm": "SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised to fp32)", "policy": "LoRA r=16 on q,k,v,o + encoder",
        "encoder": "resnet1d", "encoder_kwargs": ENCODER, "tokens_per_ecg": model.encoder.n_tokens,
        "train_batch_size": 8, "train_samples_per_s": round(8 / float(np.median(times)), 2),
        "train_step_s_median": round(float(np.median(times)), 3),
        "train_sequence_tokens_mean": round(float(np.mean(lengths)), 1),
        "train_sequence_tokens_max": int(max(lengths)),
        "answer_latency_median_s": round(float(np.median(latencies)), 3),
        "answer_latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
        "answer_new_tokens_mean": round(float(np.mean(answer_tokens)), 1),
        "latency_includes": "ECG preparation + tokenisation + encoder + greedy decoding (batch 1)",
        "dtype": "float32", "threads": torch.get_num_threads(),
        "command": "python benchmarks/bench_llm_speed.py", **environment(),
    })


if __name__ == "__main__":
    main()
