"""Training throughput and answer latency of the default ECG-LLM (SmolLM2-135M-Instruct + LoRA) on CPU.

    python benchmarks/bench_llm_speed.py [--ptbxl DIR] [--model DIR]

Real ECG-QA-style questions from the generator on ECG-QA train ECGs (PTB-XL, 100 Hz), fp32, measured for two
models in the same run:
- the shipped default checkpoint (what `ecgllm ask` runs: projected, label and named-label tokens per ECG,
  frozen encoder): a training step of the stage that made it (LoRA, projector, label-token confidences), and answers
  that stop at the end-of-turn token, as in use -> the top-level keys;
- a freshly built model with 16 projected tokens per ECG and a trained encoder, forced to 8 new tokens (the
  length-controlled measure of earlier runs) -> "fixed_8_tokens".
- the trainer itself, on the shipped checkpoint's architecture and the same generated questions, two ways in the
  same run: the earlier path (shuffled batches padded to their longest conversation, logits over every
  position) and the current one (batches grouped by length, logits only where labels are, the batch's common
  prefix run once) -> "trainer".
  Where the hardware multiplies bf16 (a CPU with AVX512-BF16/AMX, a GPU), a third path runs the current one in
  bf16 mixed precision as a recipe with ``mixed_precision: bf16`` trains (autocast, frozen weights cast once).
  The earlier path runs the LoRA dropout every recipe had before the shipped default's (0.05), the current ones
  the checkpoint's own (the shipped default trained without it; `ecgqa_selection_continuations.md`, qnd); where
  the two differ the earlier path runs again at the checkpoint's own, so the code's levers show alone.
  ``train_speedup`` is the fastest path's samples/s over the earlier path's (``train_speedup_path`` names it;
  ``train_speedup_float32`` is the float32 one's, ``train_speedup_same_lora_dropout`` the code's levers alone);
  each reports tokens/s, the padding share, the time per part (encoder, LLM forward, backward, optimizer) and its
  loss on the first batch.
Writes benchmarks/results/llm_speed.json: train_samples_per_s, train_speedup, answer_latency_median_s / _p95_s,
tokens_per_ecg, llm, and the sequence lengths used.
"""

from __future__ import annotations

import argparse
import contextlib
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
from ecgllm.models import EcgLMConfig  # noqa: E402
from ecgllm.training.model_setup import build_model  # noqa: E402
from ecgllm.models.placement import FrozenWeightsCast, cpu_has_bf16_instructions  # noqa: E402

ENCODER = {"widths": [48, 96, 128, 192], "n_tokens": 16, "blocks_per_stage": 1}
BF16_PATH = "grouped_sparse_logits_shared_prefix_bf16"
SAME_DROPOUT_BASELINE = "padded_full_logits_own_lora_dropout"
# The LoRA dropout of every LLM recipe before recipes/ecgqa/continue_question_balanced_bf16_nodropout.yaml, which
# made the shipped default without it (its random mask of every q/k/v/o input: the two earlier paths differ in it)
EARLIER_LORA_DROPOUT = 0.05


@contextlib.contextmanager
def lora_dropout(model, rate: float):
    """Every LoRA layer's input dropout set to ``rate`` (PEFT builds nn.Identity for 0); the model's own after."""
    layers = [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    saved = [dict(m.lora_dropout) for m in layers]
    for m in layers:
        for key in m.lora_dropout:
            m.lora_dropout[key] = torch.nn.Dropout(rate) if rate else torch.nn.Identity()
    try:
        yield
    finally:
        for m, modules in zip(layers, saved):
            for key, module in modules.items():
                m.lora_dropout[key] = module


def convo(s, with_answer=True):
    turns = [{"role": "user", "content": s["question"]}]
    if with_answer:
        turns.append({"role": "assistant", "content": ", ".join(s["answer"])})
    return turns


def compare_trainer_paths(model, processor, samples: list[dict], ecg: dict, batch_size: int = 8) -> dict:
    """samples/s of the earlier and the current training path over the same conversations, same weights."""
    from ecgllm.training.data import length_grouped_batches

    lengths = [len(processor.encode_for_training(convo(s), [""] * len(s["ecg_id"]))[0]) for s in samples]
    order = np.random.default_rng(0).permutation(len(samples))
    padded = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    grouped = length_grouped_batches(lengths, batch_size, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    start = {id(p): p.detach().clone() for p in params}
    timed_encode = model.encode_with_image_noise
    seconds = {"encoder": 0.0}

    def encode(*a, **k):
        t0 = time.perf_counter()
        out = timed_encode(*a, **k)
        seconds["encoder"] += time.perf_counter() - t0
        return out

    model.encode_with_image_noise = encode
    results = {}
    own = float(model.ecg_config.lora.get("lora_dropout", 0.0)) if model.ecg_config.llm_policy == "lora" else EARLIER_LORA_DROPOUT
    paths = [("padded_full_logits", padded, False, False, EARLIER_LORA_DROPOUT)]
    if own != EARLIER_LORA_DROPOUT:  # the earlier path at the checkpoint's own dropout: the code's levers alone
        paths.append((SAME_DROPOUT_BASELINE, padded, False, False, own))
    paths.append(("grouped_sparse_logits_shared_prefix", grouped, True, False, own))
    if cpu_has_bf16_instructions():  # the model runs on the CPU here; where bf16 is emulated it is slower: not offered
        paths.append((BF16_PATH, grouped, True, True, own))
    try:
        for name, batches, sparse, bf16, dropout in paths:
            with torch.no_grad():  # every path starts from the same weights and the same random stream
                for p in params:
                    p.copy_(start[id(p)])
            torch.manual_seed(0)
            model.sparse_logits = model.share_prefix = model.math_attention = sparse
            # `mixed_precision: bf16` in a recipe: Accelerate's autocast, the frozen weights cast once by the trainer
            autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
            # both undone when the path ends, even by an error
            with FrozenWeightsCast(model, enabled=bf16), lora_dropout(model, dropout):
                model.train()
                optimizer = torch.optim.AdamW(params, lr=1e-4)
                parts = {"encoder": 0.0, "llm_forward": 0.0, "backward": 0.0, "optimizer": 0.0, "collate": 0.0}
                real = padded_tokens = 0
                wall = time.perf_counter()
                for i, rows in enumerate(batches):
                    t0 = time.perf_counter()
                    chunk = [samples[r] for r in rows]
                    batch = processor([convo(s) for s in chunk], [[ecg[e] for e in s["ecg_id"]] for s in chunk])
                    real += int(batch["attention_mask"].sum())
                    padded_tokens += batch["attention_mask"].numel()
                    seconds["encoder"] = 0.0
                    t1 = time.perf_counter()
                    with autocast():
                        loss = model(**batch).loss
                    t2 = time.perf_counter()
                    if i == 0:
                        first_loss = float(loss)
                    loss.backward()
                    t3 = time.perf_counter()
                    optimizer.step()
                    optimizer.zero_grad()
                    t4 = time.perf_counter()
                    for part, value in (("collate", t1 - t0), ("encoder", seconds["encoder"]),
                                        ("llm_forward", t2 - t1 - seconds["encoder"]), ("backward", t3 - t2),
                                        ("optimizer", t4 - t3)):
                        parts[part] += value
                wall = time.perf_counter() - wall
            results[name] = {"lora_dropout": dropout, "first_batch_loss": round(first_loss, 5),
                             "samples_per_s": round(len(samples) / wall, 2),
                             "tokens_per_s": round(real / wall, 1),
                             "padded_tokens_per_s": round(padded_tokens / wall, 1),
                             "padding_share": round(1 - real / padded_tokens, 3),
                             "seconds_by_part": {k: round(v, 2) for k, v in parts.items()},
                             "wall_s": round(wall, 1), "batches": len(batches)}
    finally:  # the model leaves as it came (its encoder, training paths), even if a path failed
        model.encode_with_image_noise = timed_encode
        model.sparse_logits = model.share_prefix = model.math_attention = True
    with torch.no_grad():  # what follows (answer latency) runs the weights every path started from
        for p in params:
            p.copy_(start[id(p)])
    baseline = results["padded_full_logits"]["samples_per_s"]
    fastest = max((n for n in results if not n.startswith("padded_full_logits")), key=lambda n: results[n]["samples_per_s"])
    same_dropout = results.get(SAME_DROPOUT_BASELINE, results["padded_full_logits"])["samples_per_s"]
    return {"samples": len(samples), "batch_size": batch_size, "mean_tokens": round(float(np.mean(lengths)), 1),
            "train_speedup": round(results[fastest]["samples_per_s"] / baseline, 2), "train_speedup_path": fastest,
            "train_speedup_float32": round(results["grouped_sparse_logits_shared_prefix"]["samples_per_s"] / baseline, 2),
            "train_speedup_same_lora_dropout": round(results[fastest]["samples_per_s"] / same_dropout, 2),
            **results,
            "note": "same conversations, same starting weights and seed; 'padded_full_logits' is the float32 trainer "
                    "before length grouping, label-only logits, the shared prefix and math attention (its batches differ, so "
                    "its first_batch_loss is another batch's); the float32 paths compute the same losses (a test checks), "
                    f"'{BF16_PATH}' (recipes with mixed_precision: bf16, offered where the hardware multiplies bf16) "
                    "rounds to bf16, so its losses differ slightly (first_batch_loss); 'padded_full_logits' runs the "
                    f"LoRA dropout of the recipes before the shipped default's ({EARLIER_LORA_DROPOUT}), the other paths "
                    f"the checkpoint's own; '{SAME_DROPOUT_BASELINE}' is the earlier path at the checkpoint's own, so "
                    "train_speedup_same_lora_dropout is what the code's levers give alone"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", help="PTB-XL root with records100/ (default: unpack the shared pack once)")
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--model", metavar="DIR", help="checkpoint to time (default: the shipped one)")
    parser.add_argument("--trainer-samples", type=int, default=192,
                        help="conversations each trainer path runs through (batches of 8)")
    args = parser.parse_args()
    torch.manual_seed(0)
    ptbxl = PTBXL.load(SHARED / "ptbxl", records_root=ptbxl_wfdb_dir(args.ptbxl))
    qa = ECGQA(SHARED / "ecgqa/ecgqa")
    samples = ECGQAGenerator(build_attributes(ptbxl), qa.split_ecg_ids("train")).generate(
        8 * (args.train_steps + 1) + args.questions + args.trainer_samples, seed=0)
    trainer_samples = samples[len(samples) - args.trainer_samples:]
    samples = samples[:len(samples) - args.trainer_samples]
    ecg = {i: read_ecg(ptbxl.record_path(i, prefer_fs=100)) for s in samples + trainer_samples for i in s["ecg_id"]}

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
    from ecgllm.models.default import load_checkpoint, resolve_model_dir
    from ecgllm.serving.assistant import ECGAssistant

    shipped_dir = resolve_model_dir(args.model)
    shipped, processor, _ = load_checkpoint(str(shipped_dir), "cpu", "float32")
    for name, p in shipped.llm.named_parameters():  # the adapter loads frozen for inference; train it here
        p.requires_grad_("lora_" in name)
    step_s, lengths = train_steps(shipped, processor)
    trainer = compare_trainer_paths(shipped, processor, trainer_samples, ecg)
    shipped.merge_adapter_for_inference()  # as `ECGAssistant.load` serves it
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
              "encoder": shipped.ecg_config.encoder, "tokens_per_ecg": shipped.tokens_per_ecg,
              "train_batch_size": 8, "train_samples_per_s": round(8 / step_s, 2), "train_step_s_median": round(step_s, 3),
              "train_sequence_tokens_mean": round(float(np.mean(lengths)), 1),
              "train_sequence_tokens_max": int(max(lengths)), **latency(seconds),
              "answer_new_tokens_mean": round(float(np.mean(new_tokens)), 1),
              "answers_stop_at": "the end-of-turn token (at most 8 new tokens)",
              "train_speedup": trainer["train_speedup"], "trainer": trainer}
    del shipped, assistant

    # 2. a fresh model with 16 projected tokens per ECG, always 8 new tokens (length-controlled)
    torch.manual_seed(0)
    model, processor = build_model(EcgLMConfig(encoder_kwargs=ENCODER))
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
        "command": "python benchmarks/bench_llm_speed.py " + " ".join(sys.argv[1:]), **environment(),
    })


if __name__ == "__main__":
    main()
