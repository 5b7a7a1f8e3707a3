"""Load test of `ecgllm serve` on loopback: concurrent clients send /v1/ask requests (multipart WFDB upload +
question), a share of them invalid (an empty question: 422 expected), each with a time limit. Counts errors
other than the expected 422 and the deliberate 503 (queue full), the share turned away, p50/p95 latency of the
answered requests, the end-to-end time of requests sent one at a time (with the server's time per part), the
server's peak RSS, and the served throughput against `ECGAssistant.ask_batch` on the same
checkpoint, measured in the same run (the ceiling: batches with no HTTP, upload or measurement).

    python benchmarks/bench_serving.py [--checkpoint DIR] [--requests 2000] [--concurrency 100] [--queue 128]
        [--threads N] [--batches N] -> benchmarks/results/serving.json

The server runs as `ecgllm serve` would with the same --threads/--batches (by default its own choice, reported);
the baseline is `ask_batch` with PyTorch's default threads, one batch at a time, as a user calling it gets.

Without --checkpoint an untrained checkpoint of the default architecture (SmolLM2-135M + ResNet encoder) is
built once under $ECGLLM_CACHE: the server's cost per answer is the same as a trained one's.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import CACHE, ROOT, environment, write_result

RECORD = ROOT / "tests/fixtures/ptbxl/records100/00000/00001_lr"


def default_checkpoint() -> Path:
    out = CACHE / "bench_serving_checkpoint"
    if not (out / "config.json").exists():
        from ecgllm.models import EcgLMConfig
        from ecgllm.training.model_setup import build_model

        model, processor = build_model(EcgLMConfig(encoder_kwargs={"widths": [32, 64, 128], "n_tokens": 16}))
        model.save_pretrained(out, processor)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


QUESTIONS = ["Is this a normal ECG?", "Does this ECG show atrial fibrillation?",
             "Does this ECG show symptoms of non-specific st changes?", "Which noise does this ECG show?"]


async def burst(url: str, n: int, concurrency: int, timeout_s: float,
                invalid_every: int = 0) -> list[tuple[bool, int, float]]:
    """(valid?, status, seconds) per request; every ``invalid_every``-th request has an empty question."""
    import httpx

    files = [("ecg", ("r.hea", RECORD.with_suffix(".hea").read_bytes())),
             ("ecg", ("r.dat", RECORD.with_suffix(".dat").read_bytes()))]
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> tuple[bool, int, float]:
            valid = not invalid_every or i % invalid_every != 0
            question = QUESTIONS[i % len(QUESTIONS)] if valid else " "
            async with limit:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/ask", files=files, data={"question": question})
                    return valid, r.status_code, time.perf_counter() - t0
                except httpx.HTTPError:
                    return valid, -1, time.perf_counter() - t0
        return await asyncio.gather(*(one(i) for i in range(n)))


def ask_batch_rates(assistant, n: int = 64, repeats: int = 3) -> list[float]:
    """Answers per second of `ask_batch` (batches of 16, no HTTP, upload or measurement) on the same record, once
    per repeat: one run of this baseline has swung by half between runs of the benchmark, so the ratio is taken
    against the median of runs before and after the load test, and their spread is reported."""
    from ecgllm import read_ecg

    ecg = read_ecg(RECORD.with_suffix(".hea"))
    items = [(ecg, QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]
    assistant.ask_batch(items[:16], max_new_tokens=8)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        assistant.ask_batch(items, batch_size=16, max_new_tokens=8)
        rates.append(n / (time.perf_counter() - started))
    return rates


def one_at_a_time(url: str, n: int) -> dict:
    """End to end, one request at a time (upload, read, measure, answer, response): the client's median and the
    server's median time per part."""
    import httpx

    files = [("ecg", ("r.hea", RECORD.with_suffix(".hea").read_bytes())),
             ("ecg", ("r.dat", RECORD.with_suffix(".dat").read_bytes()))]
    walls, parts = [], []
    for i in range(n):
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/ask", files=files, data={"question": QUESTIONS[i % len(QUESTIONS)]}, timeout=60)
        walls.append(time.perf_counter() - t0)
        r.raise_for_status()
        parts.append(r.json()["timing"])
    return {"requests": n, "end_to_end_median_s": round(float(np.median(walls)), 3),
            "server_parts_median_s": {k: round(float(np.median([p[k] for p in parts])), 4) for k in parts[0]},
            "target_end_to_end_median_s": 0.5}


def child_pids(pid: int) -> list[int]:
    """The server's child processes (its measuring process)."""
    out: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in children.read_text().split()]
        except OSError:
            pass
    return out


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--queue", type=int, default=128)
    parser.add_argument("--invalid-every", type=int, default=5, help="every N-th request is invalid (0: none)")
    parser.add_argument("--timeout", type=float, default=180.0, help="per request, seconds")
    parser.add_argument("--single", type=int, default=30, help="requests sent one at a time first (end to end)")
    parser.add_argument("--threads", type=int, help="`ecgllm serve --threads` (default: the server's)")
    parser.add_argument("--batches", type=int, help="`ecgllm serve --batches` (default: the server's)")
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    from ecgllm import ECGAssistant

    baseline = ECGAssistant.load(checkpoint)
    rates_before = ask_batch_rates(baseline)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "ecgllm.serving.cli", "serve", "--port", str(port), "--model",
                               str(checkpoint), "--queue", str(args.queue), "--max-new-tokens", "8",
                               *(["--batches", str(args.batches)] if args.batches else []),
                               *(["--threads", str(args.threads)] if args.threads else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            sys.exit("the server did not come up within 60 s")
        warm = asyncio.run(burst(url, 2, 1, args.timeout))  # warm-up: first calls pay one-time costs
        if any(c != 200 for _, c, _ in warm):
            sys.exit(f"warm-up requests failed: {warm}")
        single = one_at_a_time(url, args.single)
        started = time.perf_counter()
        results = asyncio.run(burst(url, args.requests, args.concurrency, args.timeout, args.invalid_every))
        wall = time.perf_counter() - started
        rss = peak_rss_mib(server.pid)
        children_rss = [peak_rss_mib(child) for child in child_pids(server.pid)]
        health = httpx.get(url + "/v1/health", timeout=10).json()
        batches = health["recent_batches"]  # sizes the server formed
    finally:
        server.terminate()
        server.wait(timeout=30)
    rates_after = ask_batch_rates(baseline)
    batch_rate = float(np.median(rates_before + rates_after))
    codes = [c for _, c, _ in results]
    valid = [(c, t) for v, c, t in results if v]
    answered = [t for c, t in valid if c == 200]
    ok = np.array(answered) * 1000
    expected = sum((c == 200) if v else (c == 422) for v, c, _ in results)
    served_rate = len(answered) / wall
    write_result("serving.json", {
        "requests": len(results), "valid_requests": len(valid), "concurrency": args.concurrency, "queue": args.queue,
        "answered": len(answered), "rejected_503": codes.count(503) + codes.count(429),
        "turned_away_share": round((codes.count(503) + codes.count(429)) / len(results), 4),
        "errors": len(results) - expected - codes.count(503) - codes.count(429),
        "status_codes": {str(c): codes.count(c) for c in sorted(set(codes))},
        "p50_ms": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
        "p95_ms": round(float(np.percentile(ok, 95)), 1) if len(ok) else None,
        "served_answers_per_s": round(served_rate, 2), "ask_batch_answers_per_s": round(batch_rate, 2),
        "ask_batch_runs_per_s": {"before": [round(r, 2) for r in rates_before],
                                 "after": [round(r, 2) for r in rates_after]},
        "ask_batch_spread": round((max(rates_before + rates_after) - min(rates_before + rates_after)) / batch_rate, 3),
        "served_vs_ask_batch": round(served_rate / batch_rate, 3), "server_batches": batches,
        "serve_batches_at_once": health["batches_at_once"], "serve_threads_per_batch": health["threads_per_batch"],
        "targets": {"turned_away_share": "<= 0.10", "served_vs_ask_batch": ">= 0.70", "errors": 0},
        "one_at_a_time": single, "server_peak_rss_mib": rss,
        "measuring_process_peak_rss_mib": [r for r in children_rss if r is not None],
        "wall_s": round(wall, 1), "checkpoint": str(checkpoint),
        "command": "python benchmarks/bench_serving.py " + " ".join(sys.argv[1:]), "environment": environment()})


if __name__ == "__main__":
    main()
