"""Questions that arrive together are answered in one generate call, as serving engines do.

The first waiting question holds the batch open for at most ``wait_s`` (or until ``max_batch`` are waiting); the
batch then runs in a worker thread. At most ``concurrent`` batches run at once; the next one gathers while a
worker is free and waits in the queue otherwise. One batch at a time, on every core, suits a GPU; on a CPU, two
batches on half the cores each answer more per second (`ecgllm serve`'s default there): PyTorch's ops release
the interpreter lock, and a small model's matrix products split poorly over threads. Each row keeps its own token
limit and its own deadline (a row stops at its deadline and is answered 504; the others go on). A question whose deadline
has passed before its batch starts is not generated. A batch that fails is answered question by question, so one
request's bad input fails only that request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ecgllm.serving.assistant import AnswerTimeoutError


@dataclass
class _Waiting:
    records: list
    question: str
    max_new_tokens: int
    deadline: float
    future: asyncio.Future = field(repr=False)
    pieces: asyncio.Queue | None = field(default=None, repr=False)  # streaming: new text as it is generated


class _RowStreamer:
    """A `generate` streamer for a whole batch: each streaming row's new text goes to its queue as its tokens come
    (generate hands over the prompt first, then one token per row per step; a row past its own token limit, or
    padded once finished, adds nothing). Text that ends inside a multi-byte character waits for the next token."""

    def __init__(self, live: list[_Waiting], loop: asyncio.AbstractEventLoop, decode) -> None:
        self.rows = [(i, item) for i, item in enumerate(live) if item.pieces is not None]
        self.loop, self.decode = loop, decode
        self.tokens: dict[int, list[int]] = {i: [] for i, _ in self.rows}
        self.sent: dict[int, str] = {i: "" for i, _ in self.rows}

    def put(self, value) -> None:
        if value.dim() == 2:  # the prompt ([rows, tokens]): not answer text
            return
        try:
            for i, item in self.rows:
                if len(self.tokens[i]) >= item.max_new_tokens:
                    continue
                self.tokens[i].append(int(value[i]))
                text = self.decode(self.tokens[i]).strip()  # as the finished answer is stripped
                if text.endswith("\ufffd") or not text.startswith(self.sent[i]) or text == self.sent[i]:
                    continue
                self.loop.call_soon_threadsafe(item.pieces.put_nowait, text[len(self.sent[i]):])
                self.sent[i] = text
        except Exception:  # e.g. the serving loop is closed: streaming stops, the batch's answers do not
            self.rows = []

    def end(self) -> None:
        pass


class AnswerBatcher:
    def __init__(self, assistant, max_batch: int = 16, wait_s: float = 0.01, concurrent: int = 1) -> None:
        if concurrent < 1:
            raise ValueError("concurrent batches must be 1 or more")
        self.assistant, self.max_batch, self.wait_s, self.concurrent = assistant, max_batch, wait_s, concurrent
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._runner: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # batches in flight (a reference, so none is collected midway)
        # Generation has threads of its own: the shared pool may be full of uploads being read and measured.
        self._executor = ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="ecgllm-generate")
        self.batches: deque[int] = deque(maxlen=10_000)  # sizes of recent batches (tests, the load benchmark)

    async def answer(self, records: list, question: str, max_new_tokens: int, deadline: float,
                     pieces: asyncio.Queue | None = None) -> str:
        """The answer's text; `AnswerTimeoutError` when the deadline passes first. With ``pieces``, the text is also
        put there piece by piece while it is generated (their concatenation is the answer)."""
        if self._runner is None or self._runner.done():  # started on the serving loop, at first use
            self._queue = asyncio.Queue()
            self._runner = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Waiting(records, question, max_new_tokens, deadline, future, pieces))
        try:  # a safety net: the batcher answers by the deadline; this only guards against its own failure
            return await asyncio.wait_for(future, timeout=max(deadline - time.monotonic(), 0) + 30)
        except asyncio.TimeoutError:
            raise AnswerTimeoutError("no answer came back from the batch") from None

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
        free = asyncio.Semaphore(self.concurrent)
        while True:
            await free.acquire()  # a batch gathers once a worker can take it: meanwhile questions queue up
            batch = await self._gather()
            now = time.monotonic()
            live = []
            for item in batch:
                if item.future.done():  # the client went away
                    continue
                if item.deadline <= now:
                    item.future.set_exception(AnswerTimeoutError("the time for this answer ran out in the queue"))
                else:
                    live.append(item)
            if not live:
                free.release()
                continue
            self.batches.append(len(live))
            task = asyncio.create_task(self._answer_batch(live))
            self._running.add(task)
            task.add_done_callback(lambda done: (self._running.discard(done), free.release()))

    async def _answer_batch(self, live: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        try:
            texts: list = await loop.run_in_executor(self._executor, self._generate, live, loop)
        except Exception as exc:
            texts = [exc]
            if len(live) > 1:  # one question's bad input must not fail the others: each alone, its own error
                texts = []
                for item in live:
                    try:
                        texts.append((await loop.run_in_executor(self._executor, self._generate, [item]))[0])
                    except Exception as single:
                        texts.append(single)
        finished = time.monotonic()
        for item, text in zip(live, texts):
            if item.future.done():
                continue
            if isinstance(text, Exception):
                item.future.set_exception(text)
            elif finished > item.deadline:  # its row stopped at its deadline: the answer may be cut
                item.future.set_exception(AnswerTimeoutError("the time for this answer ran out; generation "
                                                             "was stopped"))
            else:
                item.future.set_result(text)

    def _generate(self, live: list[_Waiting], loop: asyncio.AbstractEventLoop | None = None) -> list[str]:
        left = max(item.deadline for item in live) - time.monotonic()
        streaming = {}
        if loop is not None and any(item.pieces is not None for item in live):
            streaming["streamer"] = _RowStreamer(live, loop, self.assistant.decode)
        # Two ECGs are an earlier and a later one (as `compare`); one ECG's prompt has no order tag either way.
        # Each row keeps its own token limit and deadline, as if it had been generated alone.
        return self.assistant._generate([item.question for item in live], [item.records for item in live],
                                        True, max(item.max_new_tokens for item in live), max(left, 0.0),
                                        limits=[item.max_new_tokens for item in live],
                                        deadlines=[item.deadline for item in live], **streaming)
