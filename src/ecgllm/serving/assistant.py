"""The Python API: ``ECGAssistant.load().ask(ecg_or_path, question)``.

Every answer comes with the measurements of the ECG(s) (heart rate, intervals, axis; computed with
neurokit2 next to the model, so a user can check the answer against numbers) and its timing.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from threading import Lock, Thread
from typing import Iterator, Sequence, Union

import torch

from ecgllm.datasets.conversation import ecg_tags
from ecgllm.io.image import ECGImage
from ecgllm.io.reader import read_ecg
from ecgllm.io.record import ECG
from ecgllm.models.answering import generate_answers, prompt_batch
from ecgllm.serving.measuring import measurement_summary

ECGLike = Union[ECG, ECGImage, str, Path]
REPORT_QUESTION = "Write a short clinical report of this ECG."
# Questions about noise: ECG-QA's ("... baseline drift in lead V3?", "... any kind of noises?", "... electrodes
# problems?") and their paraphrases ("signal distortions", "interference"), and common wordings (wander, artifact)
NOISE_QUESTION = re.compile(r"nois|baseline (drift|wander)|electrodes? problems?|contact problem|artifact|"
                            r"interference|distortion|signal quality", re.IGNORECASE)
PICTURE_NOISE_NOTE = ("noise is judged from the drawing alone: the signal-quality heads that read drift and static "
                      "noise from a signal do not see a picture, and the image encoder tells noise poorly, so this "
                      "answer may be unreliable. Ask with the signal file for noise")
PICTURE_NOISE_HEAD_NOTE = ("noise is read from the drawing by the image quality head, which tells it less well than "
                           "the signal-quality heads tell a signal's (docs/results/images.md), so this answer may be "
                           "unreliable. Ask with the signal file for noise")


def picture_noise_notes(records: Sequence[ECG | ECGImage], question: str, read_by_head: bool = False) -> list[str]:
    """A note for each picture asked about its noise: without an image quality head (``read_by_head``) a picture
    leaves the signal-quality slots blank; with one, they are filled from a weaker reading than a signal's.
    Pictures are numbered among the pictures, as the page check numbers them."""
    n_pictures = sum(isinstance(r, ECGImage) for r in records)
    if not n_pictures or not NOISE_QUESTION.search(question):
        return []
    note = PICTURE_NOISE_HEAD_NOTE if read_by_head else PICTURE_NOISE_NOTE
    return [f"{f'picture {n}' if n_pictures > 1 else 'the picture'}: {note}" for n in range(1, n_pictures + 1)]


class _RowDeadlines:
    """A stopping criterion per row: row i is done once its deadline has passed (transformers' `max_time`
    stops the whole batch)."""

    def __init__(self, deadlines: Sequence[float]) -> None:
        self.deadlines = torch.tensor(list(deadlines), dtype=torch.float64)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return (self.deadlines < time.monotonic()).to(input_ids.device)


class AnswerTimeoutError(TimeoutError):
    """An answer's deadline passed; its generation was stopped, not left running."""


@dataclass
class Answer:
    text: str
    question: str
    measurements: list[dict] = field(default_factory=list)   # one dict per ECG
    timing: dict[str, float] = field(default_factory=dict)    # seconds: read, measure, generate, total
    warnings: list[str] = field(default_factory=list)         # e.g. a picture unlike the pages the model learned

    def to_dict(self) -> dict:
        return asdict(self)


def model_identity(folder: Path) -> tuple[str, str]:
    """A checkpoint's public name and the ecgllm version that wrote it, from its metadata (``config.json``): what
    responses and pages show of a model, never the server's path to it. Training names a run's model after the
    run (``paired``, ``paired/step-600``); the shipped default is ``ecgllm-default``. A folder without a recorded
    name (written by an earlier version) is named by its own name, a run's ``final`` folder by its run's."""
    import json

    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name")
    if not isinstance(name, str) or not name.strip():
        resolved = folder.resolve()
        name = f"{resolved.parent.name}/{resolved.name}" if resolved.name == "final" else resolved.name or "model"
    return name.strip(), str(meta.get("ecgllm_version", ""))


class ECGAssistant:
    """A loaded checkpoint that answers questions about one or two ECGs.

    Example:
        >>> from ecgllm import ECGAssistant
        >>> assistant = ECGAssistant.load()                    # the default checkpoint
        >>> answer = assistant.ask("00001_lr.hea", "Does this ECG show atrial fibrillation?")
        >>> answer.text, answer.measurements[0]["heart_rate"]
    """

    def __init__(self, model, processor, name: str = "", version: str = "") -> None:
        self.model, self.processor, self.name, self.version = model.eval(), processor, name, version
        # Batches may generate in several threads at once (`AnswerBatcher(concurrent=)`); a fast tokenizer used by
        # two threads at once can fail ("Already borrowed"), so their tokenising and decoding take turns. (`stream`'s
        # streamer decodes in its own thread without the lock: the server does not stream through it.)
        self._tokenizing = Lock()

    @classmethod
    def load(cls, directory: str | Path | None = None, device: str = "auto", dtype: str = "auto") -> "ECGAssistant":
        """Load a checkpoint folder (``ecgllm train`` output), or the default checkpoint when omitted.

        ``device``: ``auto`` (a CUDA GPU when PyTorch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
        ``dtype``: ``auto`` (bf16 on a GPU that supports it, fp32 elsewhere), ``float32`` or ``bfloat16``."""
        from ecgllm.models.default import load_checkpoint

        model, processor, path = load_checkpoint(str(directory) if directory else None, device, dtype)
        if next(model.llm.parameters()).dtype == torch.float32:  # bf16 would round a small adapter away
            model.merge_adapter_for_inference()  # a loaded assistant only answers: plain linear layers are faster
        return cls(model, processor, *model_identity(Path(path)))

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def read(ecgs: Sequence[ECGLike]) -> list[ECG | ECGImage]:
        """Records and pictures as given, or read from paths (any format `read_ecg` accepts)."""
        return [e if isinstance(e, (ECG, ECGImage)) else read_ecg(e) for e in ecgs]

    def check_pages(self, records: Sequence[ECG | ECGImage]) -> list[str]:
        """Warnings for pictures unlike the ECG pages the model learned to read; a picture too unlike any ECG page
        is refused (`NotAnECGPageError`, an input error) before it is answered (`ecgllm.models.page_check`)."""
        from ecgllm.models.page_check import UNLIKE_WARNING, NotAnECGPageError, refuse_message

        images = [r for r in records if isinstance(r, ECGImage)]
        if not images or self.model.page_check is None:  # no picture, or a model without a check: nothing to do
            return []
        distances = self.model.page_distances(self.processor.prepare_images(images))
        check, warnings = self.model.page_check, []
        for number, distance in enumerate(distances, 1):
            verdict = check.verdict(float(distance))
            which = f"picture {number}" if len(images) > 1 else "the picture"
            if verdict == "not an ECG page":
                raise NotAnECGPageError(refuse_message(which, float(distance), check.refuse))
            if verdict == "unlike":
                warnings.append(f"{which}: " + UNLIKE_WARNING.format(distance=float(distance), typical=check.typical))
        return warnings

    def picture_warnings(self, records: Sequence[ECG | ECGImage], question: str) -> list[str]:
        """Every warning about the pictures among ``records`` asked ``question``: the page check's (a picture too
        unlike an ECG page is refused here, `check_pages`), then a note for each picture asked about noise."""
        return self.check_pages(records) + picture_noise_notes(records, question,
                                                               self.model.image_quality is not None)

    def _measure_ahead(self, questions: Sequence[str], ecg_lists: Sequence[list[ECG | ECGImage]]) -> None:
        """Take the measurements of a checkpoint's measurement notes before the tokenizer lock (about 0.2 s per ECG,
        kept per signal), so that the lock is held only to tokenise; nothing happens for other checkpoints."""
        for question, ecgs in zip(questions, ecg_lists):
            self.processor.notes([{"role": "user", "content": question}], ecgs)

    @staticmethod
    def _tags(ecg_lists: Sequence[list[ECG | ECGImage]], consecutive: bool) -> list[list[str]]:
        """Each prompt's ECG tags ("ECG 1 (earlier)", ... for a consecutive pair); none for a prompt without ECGs."""
        return [ecg_tags(len(e), consecutive) if e else [] for e in ecg_lists]

    def decode(self, tokens: Sequence[int]) -> str:
        """Token ids as text, special tokens left out (taking turns with the other threads' tokenising)."""
        with self._tokenizing:
            return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

    def _generate(self, questions, ecg_lists, consecutive: bool, max_new_tokens: int,
                  max_time_s: float | None = None, limits: Sequence[int] | None = None,
                  deadlines: Sequence[float] | None = None, streamer=None) -> list[str]:
        """Greedy answers of a batch. ``limits``: each row's own token limit; ``deadlines``: each row stops
        generating at its own `time.monotonic()` deadline."""
        from transformers import StoppingCriteriaList

        self._measure_ahead(questions, ecg_lists)
        tags = self._tags(ecg_lists, consecutive)
        extra = {"stopping_criteria": StoppingCriteriaList([_RowDeadlines(deadlines)])} if deadlines else {}
        if streamer is not None:  # `streamer` gets each step's tokens of every row (see `AnswerBatcher`)
            extra["streamer"] = streamer
        return generate_answers(self.model, self.processor, questions, ecg_lists, tags, max_new_tokens,
                                limits=limits, tokenizer_lock=self._tokenizing, max_time=max_time_s, **extra).texts

    def _answer(self, ecgs: Sequence[ECGLike], question: str, consecutive: bool, max_new_tokens: int,
                measure: bool) -> Answer:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        t0 = time.perf_counter()
        records = self.read(ecgs)
        warnings = self.picture_warnings(records, question)
        t1 = time.perf_counter()
        measurements = [measurement_summary(e) for e in records] if measure else []
        t2 = time.perf_counter()
        text = self._generate([question.strip()], [records], consecutive, max_new_tokens)[0]
        t3 = time.perf_counter()
        return Answer(text, question.strip(), measurements,
                      {"read_s": round(t1 - t0, 4), "measure_s": round(t2 - t1, 4), "generate_s": round(t3 - t2, 4),
                       "total_s": round(t3 - t0, 4)}, warnings)

    # ------------------------------------------------------------------------------------ public API
    def ask(self, ecg: ECGLike, question: str, max_new_tokens: int = 64, measure: bool = True) -> Answer:
        """Answer a question about one ECG (a record, or a path any reader accepts)."""
        return self._answer([ecg], question, False, max_new_tokens, measure)

    def compare(self, earlier: ECGLike, later: ECGLike, question: str = "What changed?", max_new_tokens: int = 64,
                measure: bool = True) -> Answer:
        """Answer a question about two ECGs of one patient, the earlier first."""
        return self._answer([earlier, later], question, True, max_new_tokens, measure)

    def report(self, ecg: ECGLike, max_new_tokens: int = 96) -> Answer:
        """A short free-text report of one ECG."""
        return self._answer([ecg], REPORT_QUESTION, False, max_new_tokens, True)

    def ask_batch(self, items: Sequence[tuple[ECGLike | Sequence[ECGLike], str]], batch_size: int = 16,
                  max_new_tokens: int = 64, checked: Sequence[list[str]] | None = None) -> list[Answer]:
        """Answer many (ecg or [ecg, ecg], question) pairs; batched after sorting by length, returned in the
        order given. Measurements are skipped here for speed (use `ask` for them). ``checked``: each item's
        warnings when the caller has already run `picture_warnings` on its records and question (not run again)."""
        parsed = []
        for number, (ecgs, question) in enumerate(items):
            ecgs = [ecgs] if isinstance(ecgs, (ECG, ECGImage, str, Path)) else list(ecgs)
            records = self.read(ecgs)
            parsed.append((records, question, list(checked[number]) if checked is not None
                           else self.picture_warnings(records, question)))
        order = sorted(range(len(parsed)), key=lambda i: (len(parsed[i][0]), len(parsed[i][1])))
        answers: list[Answer | None] = [None] * len(parsed)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            t0 = time.perf_counter()
            texts = self._generate([parsed[i][1] for i in chunk], [parsed[i][0] for i in chunk],
                                   consecutive=True, max_new_tokens=max_new_tokens)
            per = (time.perf_counter() - t0) / len(chunk)
            for i, text in zip(chunk, texts):
                answers[i] = Answer(text, parsed[i][1], [], {"generate_s": round(per, 4)}, parsed[i][2])
        return answers  # type: ignore[return-value]

    def stream(self, ecg: ECGLike | Sequence[ECGLike], question: str, max_new_tokens: int = 64,
               warnings: list[str] | None = None) -> Iterator[str]:
        """Yield the answer's text piece by piece as it is generated. A picture that is no ECG page is refused
        before anything is yielded; the warnings about pictures (`picture_warnings`) are appended to ``warnings``
        when a list is given."""
        from transformers import TextIteratorStreamer

        ecgs = [ecg] if isinstance(ecg, (ECG, ECGImage, str, Path)) else list(ecg)
        records = self.read(ecgs)
        noted = self.picture_warnings(records, question)
        if warnings is not None:
            warnings.extend(noted)
        # the prompt is built here, so that a question the model cannot take (a picture for a signal-only model, a
        # prompt too long, ...) raises to the caller before anything is yielded
        self._measure_ahead([question], [records])
        tags = self._tags([records], consecutive=len(records) == 2)
        with self._tokenizing:
            batch = prompt_batch(self.model, self.processor, [question], [records], tags)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_special_tokens=True)
        failed: list[BaseException] = []

        def generate() -> None:
            try:
                generate_answers(self.model, self.processor, [question], [records], tags, max_new_tokens,
                                 tokenizer_lock=self._tokenizing, batch=batch, streamer=streamer)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below, never lost with the thread
                failed.append(exc)
                streamer.end()  # ends the caller's iteration, which would otherwise wait for tokens forever

        worker = Thread(target=generate, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failed:
            raise failed[0]
