"""Load test of `ecgllm serve` on loopback: a bounded burst of concurrent /v1/ask requests (multipart WFDB
upload + question), each with a time limit. Counts errors other than the deliberate 503 (queue full) and
reports latency of the answered requests.

    python benchmarks/bench_serving.py [--checkpoint DIR] [--requests 120] [--concurrency 100]
        -> benchmarks/results/serving.json

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
        from ecgllm.models import EcgLanguageModel, EcgLMConfig

        model, processor = EcgLanguageModel.build(EcgLMConfig(encoder_kwargs={"widths": [32, 64, 128], "n_tokens": 16}))
        model.save_pretrained(out, processor)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def burst(url: str, n: int, concurrency: int, timeout_s: float) -> list[tuple[int, float]]:
    import httpx

    files = [("ecg", ("r.hea", RECORD.with_suffix(".hea").read_bytes())),
             ("ecg", ("r.dat", RECORD.with_suffix(".dat").read_bytes()))]
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> tuple[int, float]:
            async with limit:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/ask", files=files, data={"question": f"Is this a normal ECG? ({i})"})
                    return r.status_code, time.perf_counter() - t0
                except httpx.HTTPError:
                    return -1, time.perf_counter() - t0
        return await asyncio.gather(*(one(i) for i in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--queue", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=180.0, help="per request, seconds")
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "ecgllm.serving.cli", "serve", "--port", str(port), "--model",
                               str(checkpoint), "--queue", str(args.queue), "--max-new-tokens", "8"],
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
        if any(c != 200 for c, _ in warm):
            sys.exit(f"warm-up requests failed: {warm}")
        started = time.perf_counter()
        results = asyncio.run(burst(url, args.requests, args.concurrency, args.timeout))
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    codes = [c for c, _ in results]
    ok = np.array([t for c, t in results if c == 200]) * 1000
    write_result("serving.json", {
        "requests": len(results), "concurrency": args.concurrency, "workers": 1, "queue": args.queue,
        "answered": int((np.array(codes) == 200).sum()), "rejected_503": codes.count(503),
        "errors": sum(c not in (200, 503) for c in codes),
        "status_codes": {str(c): codes.count(c) for c in sorted(set(codes))},
        "p50_ms": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
        "p95_ms": round(float(np.percentile(ok, 95)), 1) if len(ok) else None,
        "wall_s": round(wall, 1), "checkpoint": str(checkpoint), "environment": environment()})


if __name__ == "__main__":
    main()
