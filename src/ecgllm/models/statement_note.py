"""For two ECGs, which statements the classifier finds only in the second, only in the first, and in both: one line
of text the model reads beside the second ECG's tokens.

Why: ECG-QA's comparison queries ("What symptoms are newly detected in the second ECG as compared to the first
ECG?", "... have been resolved ...", "... still remain ...") ask for the set difference of two ECGs' statements. The
model reads each ECG's likeliest statements as label tokens, and taking the difference of two such lists is a step
it did not learn: the default answered these templates worst of all (docs/results/ecgqa_evidence.md), about as well
with another patient's ECGs, while copying the difference of the classifier's own statements would answer more of them
(an ad-hoc read on generated ECG-QA valid questions, recipes/ecgqa/continue_statement_note.yaml). A model trained with
the note did not learn to read it in 1,000 steps (docs/results/ecgqa_candidate_statement_note.md). A serial comparison is what
ECG machines print beside a repeat ECG, and the measurement notes' comparison (`measurement_note.comparison_note`)
did the same for the numeric templates.

The statements are the checkpoint's own classifier (the label tokens' frozen head on the encoder's pooled tokens,
`StatementReader`) at probability 0.5 or more, named as ECG-QA's answers name them; so the note is read from the
ECGs: other ECGs bring another note, and a prompt without ECGs has none. A picture's statements come from the image
encoder's pooled tokens, as its label tokens do. Only comparisons that are not about measurements get the note (those
read the measurement notes), which keeps other prompts as short as before.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ecgllm.datasets.ecgqa_attributes import ALL_CODES, SCP_NAMES

META_KEY = "classifier_statements"  # an ECG's statements, when the caller read them already (training)
THRESHOLD = 0.5  # a calibrated classifier's "more likely present than not"; fixed before any model read a note
STATEMENT_NOTE_VERSIONS = {1: "for two ECGs, the classifier's statements (p >= 0.5) only in the second, only in the "
                              "first and in both, when the question is not about measurements"}
_MEMO_SIZE = 4096
_ASKABLE = set(ALL_CODES)  # the statements ECG-QA asks about (NORM and its never-asked codes left out)


def statements_above(probabilities: Sequence[float] | np.ndarray, codes: Sequence[str],
                     threshold: float = THRESHOLD) -> list[str]:
    """ECG-QA's names of the askable statements whose probability reaches ``threshold``, sorted. ``codes``: the
    classifier's output codes in order (its extra outputs, such as superclasses, beyond them are ignored)."""
    return sorted(SCP_NAMES[code] for code, p in zip(codes, probabilities)
                  if code in _ASKABLE and float(p) >= threshold)


def statement_comparison_note(first: Sequence[str], second: Sequence[str]) -> str:
    """``"Statements against the first ECG: new: sinus tachycardia. Gone: none. Still present: sinus rhythm."``"""
    a, b = set(first), set(second)
    new, gone, still = (", ".join(sorted(s)) or "none" for s in (b - a, a - b, a & b))
    return f"Statements against the first ECG: new: {new}. Gone: {gone}. Still present: {still}."


def _content_key(ecg) -> bytes:
    """What an ECG's statements depend on: its samples, rate and leads, or a picture's pixels."""
    from ecgllm.io.image import ECGImage

    if isinstance(ecg, ECGImage):
        data, extra = np.ascontiguousarray(ecg.image), b"image"
    else:
        data, extra = np.ascontiguousarray(ecg.signal), repr((float(ecg.fs), tuple(ecg.leads))).encode()
        mask = getattr(ecg, "mask", None)  # a prepared ECG's real leads
        extra += b"" if mask is None else np.ascontiguousarray(mask).tobytes()
    return hashlib.blake2b(data.tobytes() + str(data.shape).encode() + extra, digest_size=16).digest()


class StatementReader:
    """The statements a model's own classifier finds in ECGs (signals or pictures), as `statements_above` names
    them: the frozen label-token head on the pooled encoder tokens, on the model's device. Statements are kept per
    ECG content: a reader belongs to one model whose encoders and head no longer change."""

    def __init__(self, model, processor) -> None:
        if model.label_tokens is None:
            raise ValueError("statement notes need a model with label tokens (their classifier head finds the "
                             "statements)")
        self.model, self.processor = model, processor
        self._memo: OrderedDict[bytes, list[str]] = OrderedDict()
        self._lock = threading.Lock()  # serving answers from several threads

    @property
    def codes(self) -> list[str]:
        """The classifier's PTB-XL statement codes in its head's order (read when needed: a stage's model learns
        its label vocabulary from its start after it is built)."""
        codes = list((self.model.label_vocab or {}).get("all71", []))
        if not codes:
            raise ValueError("statement notes need the classifier's statement codes (the model's label vocabulary "
                             "has no \"all71\" list)")
        return codes

    @torch.no_grad()
    def probabilities(self, ecgs: Sequence) -> np.ndarray:
        """[len(ecgs), labels] probabilities of the classifier's statements, read with the model in eval mode
        whatever its mode (a model just built for a stage is in training mode: its encoder's batch norms would
        normalise by the batch and move their running statistics, changing the frozen encoder), then left as it was."""
        from ecgllm.io.image import ECGImage

        if not ecgs:
            return np.zeros((0, len(self.model.label_tokens.head.weight)), np.float32)
        is_image = [isinstance(e, ECGImage) for e in ecgs]
        signals = [e for e, image in zip(ecgs, is_image) if not image]
        images = [e for e, image in zip(ecgs, is_image) if image]
        ecg, mask = self.processor.prepare_ecgs(signals) if signals else (None, None)
        pixels = self.processor.prepare_images(images) if images else None
        was_training = self.model.training
        self.model.eval()
        try:
            features = self.model.encode(ecg, mask, pixels, torch.tensor(is_image) if images else None)
            head = self.model.label_tokens.head
            pooled = self.model.encoder.pool(features).to(head.weight.dtype)
            return torch.sigmoid(head(pooled).float()).cpu().numpy()
        finally:
            self.model.train(was_training)

    def __call__(self, ecgs: Sequence) -> list[list[str]]:
        """Each ECG's statements; kept per ECG content for the rest of the process, so a server that prepares a
        prompt twice (`ECGAssistant._measure_ahead`) or an evaluation that asks one ECG many questions reads it once."""
        keys = [_content_key(e) for e in ecgs]
        with self._lock:
            found = {key: self._memo[key] for key in keys if key in self._memo}
        todo = [i for i, key in enumerate(keys) if key not in found]
        if todo:
            codes = self.codes
            for i, row in zip(todo, self.probabilities([ecgs[i] for i in todo])):
                found[keys[i]] = statements_above(row, codes)
            with self._lock:
                self._memo.update((keys[i], found[keys[i]]) for i in todo)
                while len(self._memo) > _MEMO_SIZE:
                    self._memo.popitem(last=False)
        return [list(found[key]) for key in keys]

    def of_records(self, record_ids: Sequence[int], cache, batch: int = 256) -> dict[int, list[str]]:
        """Statements of cached records (`ECGCache`), read in batches: what training hands the processor with
        each ECG (`META_KEY`), so the frozen classifier runs once per record, not once per step."""
        out: dict[int, list[str]] = {}
        ids = sorted({int(i) for i in record_ids})
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            out.update(zip(chunk, self(cache.ecgs(chunk))))
        return out


def attach_statement_reader(model, processor) -> None:
    """Let the processor read statements with the model's classifier, where the checkpoint writes statement notes
    (a no-op for others): every place that loads or builds a model with its processor calls this."""
    processor.statement_reader = StatementReader(model, processor) if processor.config.statement_note else None
