"""Running a model over ECG-QA samples, batched (sorted by length) with a progress bar, under a probe:

- ``none``: each sample with its own ECG(s);
- ``blind``: the ECGs are removed from the prompt (no ``<ecg>`` tokens at all): what the model knows from the
  question alone;
- ``random-ecg``: every ECG is replaced by another ECG of the evaluated set, from another patient where the
  patient is known: accuracy should fall towards blind if answers really come from the ECG.

Predictions are appended to a JSONL file batch by batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ecgllm.datasets.conversation import ecg_tags
from ecgllm.datasets.ecgqa import QASample
from ecgllm.io.record import ECG
from ecgllm.models.answering import generate_answers

PROBES = ("none", "blind", "random-ecg")


@dataclass
class Prompt:
    question: str
    ecgs: list[ECG]
    tags: list[str]


class ModelAnswerer:
    """Greedy answers of an `EcgLanguageModel`, plus P(yes) / (P(yes) + P(no)) at the first answer token."""

    def __init__(self, model, processor, batch_size: int = 16, max_new_tokens: int = 32) -> None:
        self.model, self.processor = model.eval(), processor
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def __call__(self, prompts: Sequence[Prompt]) -> list[tuple[str, float]]:
        answers = generate_answers(self.model, self.processor, [p.question for p in prompts],
                                   [p.ecgs for p in prompts], [p.tags for p in prompts], self.max_new_tokens,
                                   yes_no=True)
        return list(zip(answers.texts, answers.p_yes))


def random_ecg_mapping(ecg_ids: Sequence[int], seed: int = 0, patient_of: dict[int, object] | None = None) -> dict[int, int]:
    """Each id -> another id of the same pool, never itself and, when patients are known, never the same
    patient (a permutation, so every ECG is still used once)."""
    ids = np.array(sorted({int(i) for i in ecg_ids}))
    if len(ids) < 2:
        raise ValueError("random-ECG needs at least two distinct ECGs")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    patient_of = patient_of or {}

    def clash(a: int, b: int) -> bool:
        pa, pb = patient_of.get(int(ids[a])), patient_of.get(int(ids[b]))
        return a == b or (pa is not None and pa == pb)

    for _ in range(20):  # repair clashes by swapping targets with random positions
        bad = [i for i in range(len(ids)) if clash(i, perm[i])]
        if not bad:
            break
        for i in bad:
            j = int(rng.integers(len(ids)))
            if not clash(i, perm[j]) and not clash(j, perm[i]):
                perm[i], perm[j] = perm[j], perm[i]
    return {int(ids[i]): int(ids[perm[i]]) for i in range(len(ids))}


def build_prompt(sample: QASample, get_ecg: Callable[[int], ECG], probe: str, mapping: dict[int, int] | None) -> Prompt:
    if probe == "blind":
        return Prompt(sample.question, [], [])
    ids = [mapping[i] for i in sample.ecg_id] if probe == "random-ecg" else list(sample.ecg_id)
    consecutive = sample.question_type.startswith("comparison_consecutive")
    return Prompt(sample.question, [get_ecg(i) for i in ids], ecg_tags(len(ids), consecutive))


def done_keys(path: Path, key: Callable[[dict], object]) -> set:
    """Keys of the complete lines of an append-only JSONL output; a last line cut by a crash is removed, so
    the resumed run writes it again instead of leaving half a line behind."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    done = set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            done.add(key(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return done


def run_samples(samples: Sequence[QASample], answerer: Callable[[Sequence[Prompt]], list[tuple[str, float]]],
                get_ecg: Callable[[int], ECG], out_jsonl: str | Path, probe: str = "none", seed: int = 0,
                patient_of: dict | None = None, batch_size: int = 16, progress: bool = True) -> Path:
    """Answer every sample (resuming from ``out_jsonl``) and return the predictions file."""
    from tqdm import tqdm

    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    out_jsonl = Path(out_jsonl)
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    mapping = (random_ecg_mapping([i for s in samples for i in s.ecg_id], seed, patient_of)
               if probe == "random-ecg" else None)
    done = done_keys(out_jsonl, lambda row: (row.get("variant") or "", int(row["sample_id"])))
    todo = [s for s in samples if (s.variant or "", s.sample_id) not in done]
    todo.sort(key=lambda s: (len(s.ecg_id), len(s.question)))  # similar lengths share a batch: less padding
    with out_jsonl.open("a", encoding="utf-8") as fh, tqdm(total=len(samples), initial=len(samples) - len(todo),
                                                            desc=f"answering ({probe})", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            answers = answerer([build_prompt(s, get_ecg, probe, mapping) for s in chunk])
            for s, (text, p_yes) in zip(chunk, answers):
                used = [] if probe == "blind" else [mapping[i] if mapping else i for i in s.ecg_id]
                fh.write(json.dumps({"sample_id": s.sample_id, "variant": s.variant, "answer": text,
                                     "p_yes": None if p_yes != p_yes else round(float(p_yes), 6), "probe": probe, "ecg_ids": used}) + "\n")
            fh.flush()
            bar.update(len(chunk))
    return out_jsonl
