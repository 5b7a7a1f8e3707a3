"""Measurements beside the model: what neurokit2 measures on a signal, and a process that measures for the server.

The server measures each request's ECGs while its question waits in a generation batch. Measured in a thread of
the server's own process, the Python-heavy measuring held the interpreter lock that the generating thread needs
between its PyTorch calls: on 2 cores a batch of 10 answers took 1.6 s alone and 3.4 s beside a thread that
measured (scratch check, 1 PyTorch thread). A process of its own measures without slowing generation.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ecgllm.io.image import ECGImage
from ecgllm.io.record import ECG

MEASURED = ("heart_rate", "rr_ms", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "axis_deg", "axis_category",
            "quality_label")
_pool: ProcessPoolExecutor | None = None


def measurement_summary(ecg: ECG | ECGImage) -> dict:
    """What neurokit2 measures on a signal; an image is not measured (its size is reported instead)."""
    from ecgllm.signal.measure import measure

    if isinstance(ecg, ECGImage):
        return {"image": f"{ecg.size[0]}x{ecg.size[1]}", "note": "measurements need the signal, not a picture"}

    try:
        m = measure(ecg)
    except Exception as exc:  # measurements are an extra: a failure must not cost the answer
        return {"error": f"measurement failed: {exc}"}
    out = {k: getattr(m, k) for k in MEASURED}
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def _summaries(signals: list[ECG]) -> list[dict]:
    from ecgllm.signal.measure import measure  # noqa: F401  (imported once, by `start_measuring`)

    return [measurement_summary(e) for e in signals]


def _measuring_pool() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:  # spawn: a forked child would inherit PyTorch's threads and locks
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return _pool


def start_measuring() -> None:
    """Start the measuring process and its imports now (a server's first answer should not wait for them)."""
    _measuring_pool().submit(_summaries, []).result()


async def measure_elsewhere(records: list[ECG | ECGImage]) -> list[dict]:
    """`measurement_summary` of each record, the signals measured in the measuring process (started at first
    use, shared by every app of this process); pictures are only sized, here."""
    global _pool
    signals = [e for e in records if not isinstance(e, ECGImage)]
    measured: list[dict] = []
    if signals:
        try:
            measured = await asyncio.get_running_loop().run_in_executor(_measuring_pool(), _summaries, signals)
        except BrokenProcessPool:  # the measuring process died (e.g. killed for memory): start anew next time
            _pool = None
            measured = [{"error": "measurement failed: the measuring process stopped"} for _ in signals]
    found = iter(measured)
    return [measurement_summary(e) if isinstance(e, ECGImage) else next(found) for e in records]
