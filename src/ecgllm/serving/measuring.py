"""Measurements beside the model: what neurokit2 measures on a signal, and a process that measures for the server.

The server measures each request's ECGs while its question waits in a generation batch. Measured in a thread of
the server's own process, the Python-heavy measuring held the interpreter lock that the generating thread needs
between its PyTorch calls, and a batch took about twice as long (scratch check on 2 cores, one PyTorch thread).
A process of its own measures without slowing generation. Measurements are an extra: whatever goes wrong with
them (a failing record, a dead or stuck process, a request's deadline) costs the measurement, never the answer.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ecgllm.io.image import ECGImage
from ecgllm.io.record import ECG

MEASURED = ("heart_rate", "rr_ms", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "axis_deg", "axis_category",
            "quality_label")
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def measurement_summary(ecg: ECG | ECGImage) -> dict:
    """What neurokit2 measures on a signal; an image is not measured (its size is reported instead)."""
    if isinstance(ecg, ECGImage):
        return {"image": f"{ecg.size[0]}x{ecg.size[1]}", "note": "measurements need the signal, not a picture"}
    from ecgllm.signal.measure import measure

    try:
        m = measure(ecg, beat_similarity=False)  # its `quality` is not in MEASURED: skipping it halves the cost
    except Exception as exc:  # measurements are an extra: a failure must not cost the answer
        return {"error": f"measurement failed: {exc}"}
    out = {k: getattr(m, k) for k in MEASURED}
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def _summaries(signals: list[ECG]) -> list[dict]:
    return [measurement_summary(e) for e in signals]


def _measuring_process_starts(parent: int) -> None:
    """In the measuring process: Ctrl+C is the server's to handle; leave when the server is gone (even killed);
    import neurokit2 now, not on the first request."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    import neurokit2  # noqa: F401


def _measuring_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:  # spawn: a forked child would inherit PyTorch's threads and locks
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_measuring_process_starts, initargs=(os.getpid(),))
        return _pool


def _discard(pool: ProcessPoolExecutor) -> None:
    """Stop using ``pool`` (dead or stuck); the next measurement starts a new process. Work already queued there
    still runs (or fails with it), so no waiting request is cancelled."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False)


def start_measuring() -> None:
    """Start the measuring process now (a server's first answer should not wait for it)."""
    _measuring_pool().submit(_summaries, []).result()


async def measure_elsewhere(records: list[ECG | ECGImage], timeout_s: float | None = None) -> list[dict]:
    """`measurement_summary` of each record, in order: the signals measured in the measuring process (started at
    first use, shared by every app of this process), pictures only sized, here. ``timeout_s``: give up after it."""
    signals = [e for e in records if not isinstance(e, ECGImage)]
    measured: list[dict] = []
    if signals:
        pool = _measuring_pool()
        try:
            work = asyncio.get_running_loop().run_in_executor(pool, _summaries, signals)
            measured = await asyncio.wait_for(work, timeout=timeout_s)
        except (BrokenProcessPool, asyncio.TimeoutError) as exc:
            _discard(pool)
            why = "it took too long" if isinstance(exc, asyncio.TimeoutError) else "the measuring process stopped"
            measured = [{"error": f"measurement failed: {why}"} for _ in signals]
        except Exception as exc:  # e.g. a record that cannot be sent to the process
            measured = [{"error": f"measurement failed: {exc}"} for _ in signals]
    found = iter(measured)
    return [measurement_summary(e) if isinstance(e, ECGImage) else next(found) for e in records]
