"""Questions that arrive together are answered in one generate call, as serving engines do.

The first waiting question holds the batch open for at most ``wait_s`` (or until ``max_batch`` are waiting); the
batch then runs in a worker thread while the next one gathers. One batch runs at a time: the model's cores are
busy with it, and a larger batch is cheaper per answer than two at once. A question whose deadline has passed
before its batch starts is not generated; a batch stops generating at its earliest deadline, and the questions
whose own deadline is later go back to the queue rather than be answered with a cut answer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from ecgllm.serving.assistant import AnswerTimeoutError


@dataclass
class _Waiting:
    records: list
    question: str
    max_new_tokens: int
    deadline: float
    future: asyncio.Future = field(repr=False)


class AnswerBatcher:
    def __init__(self, assistant, max_batch: int = 16, wait_s: float = 0.01) -> None:
        self.assistant, self.max_batch, self.wait_s = assistant, max_batch, wait_s
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._runner: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the batches run (for tests and the load benchmark)

    async def answer(self, records: list, question: str, max_new_tokens: int, deadline: float) -> str:
        """The answer's text; `AnswerTimeoutError` when the deadline passes first."""
        if self._runner is None or self._runner.done():  # started on the serving loop, at first use
            self._queue = asyncio.Queue()
            self._runner = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Waiting(records, question, max_new_tokens, deadline, future))
        return await future

    async def _gather(self) -> list[_Waiting]:
        batch = [await self._queue.get()]
        closes = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.max_batch:
            left = closes - asyncio.get_running_loop().time()
            if left <= 0 and self._queue.empty():
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=max(left, 0)))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            now = time.monotonic()
            live = []
            for item in batch:
                if item.future.cancelled():
                    continue
                if item.deadline <= now:
                    item.future.set_exception(AnswerTimeoutError("the time for this answer ran out in the queue"))
                else:
                    live.append(item)
            if not live:
                continue
            self.batches.append(len(live))
            try:
                texts = await run_in_threadpool(self._generate, live)
            except Exception as exc:  # one failure answers every question of the batch with it
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finished = time.monotonic()
            cut = finished >= min(item.deadline for item in live)  # generation stopped at the earliest deadline
            for item, text in zip(live, texts):
                if item.future.done():
                    continue
                if finished > item.deadline:
                    item.future.set_exception(AnswerTimeoutError("the time for this answer ran out; generation "
                                                                 "was stopped"))
                elif cut:  # its answer may have been cut at another question's deadline: generate it again
                    self._queue.put_nowait(item)
                else:
                    item.future.set_result(text)

    def _generate(self, live: list[_Waiting]) -> list[str]:
        left = min(item.deadline for item in live) - time.monotonic()
        # Two ECGs are an earlier and a later one (as `compare`); one ECG's prompt has no order tag either way.
        return self.assistant._generate([item.question for item in live], [item.records for item in live],
                                        True, max(item.max_new_tokens for item in live), max(left, 0.0))
