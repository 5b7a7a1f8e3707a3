"""The serving batcher with a stub assistant: questions that arrive together share one generate call, each keeps
its own token limit and deadline, an expired question is not generated, and one bad question fails alone."""

from __future__ import annotations

import asyncio
import time

import pytest

from ecgllm.errors import InputError
from ecgllm.serving.assistant import AnswerTimeoutError
from ecgllm.serving.batcher import AnswerBatcher


class StubAssistant:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def _generate(self, questions, ecg_lists, consecutive, max_new_tokens, max_time_s=None, limits=None,
                  deadlines=None):
        self.calls.append(list(questions))
        if "bad" in questions:
            raise InputError("a bad question")
        return [f"{q}:{limit}:{len(ecgs)}" for q, limit, ecgs in zip(questions, limits, ecg_lists)]


def run(batcher: AnswerBatcher, items: list[tuple[list, str, int, float]]) -> list:
    async def main():
        return await asyncio.gather(*(batcher.answer(*item) for item in items), return_exceptions=True)
    return asyncio.run(main())


def test_questions_arriving_together_share_a_call_and_keep_their_own_limits():
    stub = StubAssistant()
    later = time.monotonic() + 30
    answers = run(AnswerBatcher(stub, max_batch=8, wait_s=0.05),
                  [(["ecg"], "a", 4, later), (["old", "new"], "b", 96, later), (["ecg"], "c", 8, later)])
    assert answers == ["a:4:1", "b:96:2", "c:8:1"]
    assert stub.calls == [["a", "b", "c"]]


def test_one_bad_question_fails_alone_and_an_expired_one_is_not_generated():
    stub = StubAssistant()
    later = time.monotonic() + 30
    answers = run(AnswerBatcher(stub, max_batch=8, wait_s=0.05),
                  [(["ecg"], "a", 4, later), (["ecg"], "bad", 4, later), (["ecg"], "c", 4, later),
                   (["ecg"], "late", 4, time.monotonic() - 1)])
    assert answers[0] == "a:4:1" and answers[2] == "c:4:1"
    assert isinstance(answers[1], InputError) and isinstance(answers[3], AnswerTimeoutError)
    assert ["late"] not in stub.calls and all("late" not in call for call in stub.calls)


@pytest.mark.parametrize("max_batch", [1, 2])
def test_batches_never_exceed_their_size(max_batch):
    stub = StubAssistant()
    later = time.monotonic() + 30
    batcher = AnswerBatcher(stub, max_batch=max_batch, wait_s=0.05)
    answers = run(batcher, [(["ecg"], q, 4, later) for q in "abcde"])
    assert answers == [f"{q}:4:1" for q in "abcde"] and max(batcher.batches) <= max_batch


def test_the_measuring_process_keeps_the_order_of_mixed_records_and_a_failure_costs_only_the_measurement():
    import asyncio

    import numpy as np

    from ecgllm.io.image import ECGImage
    from ecgllm.io.record import ECG
    from ecgllm.serving.measuring import measure_elsewhere, measurement_summary

    t = np.arange(1000) / 100.0
    beats = np.exp(-((t % 0.8 - 0.4) ** 2) / 2e-4)[None].repeat(12, 0)
    ecg = ECG(beats, 100.0, ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"], {})
    from PIL import Image

    picture = ECGImage(Image.new("RGB", (60, 40), "white"))
    out = asyncio.run(measure_elsewhere([picture, ecg, picture]))
    assert out[0] == out[2] == measurement_summary(picture)
    assert out[1] == measurement_summary(ecg) and "heart_rate" in out[1]
    unsendable = ECG(beats, 100.0, ecg.leads, {"reader": lambda: None})  # cannot be pickled to the process
    failed = asyncio.run(measure_elsewhere([unsendable, picture]))
    assert failed[0]["error"].startswith("measurement failed") and failed[1] == measurement_summary(picture)


class SlowStub(StubAssistant):
    """Records how many batches generate at the same moment."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.inside = self.most_inside = 0
        self._lock = threading.Lock()

    def _generate(self, questions, *args, **kwargs):
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        time.sleep(0.2)
        with self._lock:
            self.inside -= 1
        return super()._generate(questions, *args, **kwargs)


@pytest.mark.parametrize("concurrent", [1, 2])
def test_at_most_the_given_number_of_batches_generate_at_once(concurrent):
    stub = SlowStub()
    later = time.monotonic() + 30
    batcher = AnswerBatcher(stub, max_batch=2, wait_s=0.01, concurrent=concurrent)
    answers = run(batcher, [(["ecg"], q, 4, later) for q in "abcdef"])
    assert answers == [f"{q}:4:1" for q in "abcdef"]
    assert stub.most_inside == concurrent and max(batcher.batches) <= 2


def test_a_batcher_needs_a_worker():
    with pytest.raises(ValueError, match="1 or more"):
        AnswerBatcher(StubAssistant(), concurrent=0)


@pytest.mark.parametrize("cores, device, given, expected", [
    (2, "cpu", (None, None), (2, 1)),   # a CPU: two batches on half the cores each
    (8, "cpu", (None, None), (2, 4)),
    (2, "cpu", (None, 2), (1, 2)),      # --threads alone: one batch on those threads, as before --batches
    (4, "cpu", (3, None), (3, 1)),
    (1, "cpu", (None, None), (1, 1)),
    (8, "cuda", (None, None), (1, 8)),  # a GPU: one batch
])
def test_serve_divides_the_cores_among_batches(monkeypatch, cores, device, given, expected):
    from types import SimpleNamespace

    import torch

    from ecgllm.serving.cli_ask import serving_threads

    chosen = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    parameter = SimpleNamespace(device=SimpleNamespace(type=device))
    assistant = SimpleNamespace(model=SimpleNamespace(parameters=lambda: iter([parameter])))
    assert serving_threads(assistant, *given) == expected and chosen == [expected[1]]
