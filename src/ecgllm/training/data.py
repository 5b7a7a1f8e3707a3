"""Conversations + ECG signals as a torch dataset; batches are made by the model's processor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import torch
from torch.utils.data import Dataset

from ecgllm.datasets.cache import ECGCache
from ecgllm.datasets.ecgqa_templates import HeldOutWordingError, held_out_worded
from ecgllm.datasets.split_policy import load_policy
from ecgllm.io.image import ECGImage
from ecgllm.io.record import ECG
from ecgllm.models.measurement_note import META_KEY, read_measurement_rows
from ecgllm.models.statement_note import META_KEY as STATEMENTS_KEY


class ConversationDataset(Dataset):
    """Each item: (turns, ECGs, tags) for one conversation whose ECGs come from a prepared cache."""

    def __init__(self, jsonl: str | Path, cache: ECGCache, max_samples: int | None = None,
                 stage: str = "training", measurements: str | Path | None = None) -> None:
        self.rows = []
        self.line_numbers: list[int] = []  # each row's line in the file, for errors that name it
        with Path(jsonl).open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    self.rows.append(json.loads(line))
                    self.line_numbers.append(number)
                if max_samples and len(self.rows) >= max_samples:
                    break
        self.cache = cache
        # each record's measured features, handed to the processor's measurement notes with its ECG
        self.measurements = read_measurement_rows(measurements) if measurements else {}
        # each record's classifier statements, for statement notes (filled by the stage: `read_statements`)
        self.statements: dict[int, list[str]] = {}
        # before anything else: weight training never sees an ECG-QA valid/test patient (datasets/split_policy.py)
        load_policy().refuse(self.ptbxl_record_ids(), source=str(jsonl), stage=stage)
        held_out = held_out_worded(self.rows)  # and never a wording kept for measuring unseen paraphrases
        if held_out:
            raise HeldOutWordingError(
                f"{jsonl}: {len(held_out)} ECG-QA questions are in a held-out or unknown paraphrased wording (first at "
                f"line {self.line_numbers[held_out[0]]}); training never sees them: rebuild the data with "
                f"`ecgllm data generate/convert --split train`, which leave them out.")
        known = set(cache.index["ecg_id"].tolist())
        missing = {int(e["record_id"]) for r in self.rows for e in r["ecgs"]} - known
        if missing:
            raise ValueError(f"{jsonl}: {len(missing)} referenced ECGs are not in the cache {cache.path} "
                             f"(e.g. {sorted(missing)[:5]})")

    def __len__(self) -> int:
        return len(self.rows)

    def ptbxl_record_ids(self) -> set[int]:
        """PTB-XL ecg_ids this data trains on (the split policy is about PTB-XL patients)."""
        return {int(e["record_id"]) for r in self.rows for e in r["ecgs"]
                if str(e.get("dataset", "ptbxl")).lower().replace("-", "") == "ptbxl"}

    def text(self, i: int) -> tuple[list[dict[str, str]], list[str]]:
        """Turns and ECG tags of conversation ``i`` (no signal is read)."""
        row = self.rows[i]
        return ([{"role": t["role"], "content": t["content"]} for t in row["turns"]],
                [e.get("tag", "") for e in row["ecgs"]])

    def measurement_rows(self, i: int) -> list[dict[str, float]]:
        """Each ECG's row of the measurement table (empty where the table lacks the record)."""
        return [self.measurements.get(int(e["record_id"]), {}) for e in self.rows[i]["ecgs"]]

    def two_ecg_record_ids(self) -> set[int]:
        """Records of the conversations about two ECGs (the ones statement notes compare)."""
        return {int(e["record_id"]) for r in self.rows if len(r["ecgs"]) == 2 for e in r["ecgs"]}

    def read_statements(self, reader) -> None:
        """Each two-ECG record's statements, read once by the model's frozen classifier (`StatementReader`)."""
        self.statements = reader.of_records(sorted(self.two_ecg_record_ids()), self.cache)

    def statements_of(self, i: int) -> list[list[str]] | None:
        """Each ECG's statements of conversation ``i``, where all were read (None otherwise)."""
        ids = [int(e["record_id"]) for e in self.rows[i]["ecgs"]]
        return [self.statements[r] for r in ids] if all(r in self.statements for r in ids) else None

    def __getitem__(self, i: int):
        row = self.rows[i]
        ids = [int(e["record_id"]) for e in row["ecgs"]]
        ecgs = self.cache.ecgs(ids)
        for ecg, record_id in zip(ecgs, ids):
            if record_id in self.measurements:
                ecg.meta[META_KEY] = self.measurements[record_id]
            if record_id in self.statements:
                ecg.meta[STATEMENTS_KEY] = self.statements[record_id]
        ecgs = [_as_rendered(ecg, ref.get("render")) for ecg, ref in zip(ecgs, row["ecgs"])]
        turns = [{"role": t["role"], "content": t["content"]} for t in row["turns"]]
        meta = row.get("meta", {})
        weight = meta.get("ipw_weight")
        return turns, ecgs, [e.get("tag", "") for e in row["ecgs"]], None if weight is None else float(weight)


def _as_rendered(ecg: ECG, render: dict | None) -> ECG | ECGImage:
    """The ECG itself, or the page its reference asks for (`ecgllm data as-images`)."""
    if not render:
        return ecg
    from ecgllm.render.pages import PageSpec

    return PageSpec.from_reference(render).draw(ecg).as_ecg_image(render=render)


def make_collate(processor, debias: str = "none"):
    """Batches from the processor; ``ipw`` adds per-sample loss weights (written into the data by `ecgllm data
    debias`)."""
    def collate(items):
        turns, ecgs, tags, weights = zip(*items)
        batch = processor(list(turns), list(ecgs), tags=list(tags), train=True)
        if debias == "ipw":
            if any(w is None for w in weights):  # a missing weight is not a weight of 1
                raise ValueError("debias: ipw needs meta.ipw_weight in every conversation (run `ecgllm data debias`)")
            batch["sample_weight"] = torch.tensor(weights, dtype=torch.float32)
        return batch
    return collate


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int = 0, epoch: int = 0,
                           group_batches: int = 64) -> list[list[int]]:
    """Shuffled batches of conversations of similar token length, so little of a batch is padding: a permutation
    seeded by (seed, epoch), cut into groups of ``group_batches`` batches; each group sorted by length and cut
    into batches; the full batches shuffled, the one short batch, if any, last. The order depends only on (seed,
    epoch), so a resumed run sees the same batches."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches = []
    group = batch_size * group_batches
    for start in range(0, len(order), group):
        members = order[start:start + group]
        members = members[np.argsort(-lengths[members], kind="stable")]
        batches += [members[i:i + batch_size].tolist() for i in range(0, len(members), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    return [full[k] for k in rng.permutation(len(full))] + short


def token_lengths(dataset: ConversationDataset, processor) -> list[int]:
    """Training tokens of every conversation, as the processor will encode it (measurement notes from the data's
    table, a record the table lacks counted with a note that measured nothing; statement notes from the statements
    the stage read)."""
    lengths = []
    for i in range(len(dataset)):
        turns, tags = dataset.text(i)
        rows = dataset.measurement_rows(i) if processor.wants_notes(turns, len(tags)) else None
        statements = dataset.statements_of(i) if processor.wants_statement_note(turns, len(tags)) else None
        notes = processor.notes_of_rows(rows, statements) if rows is not None or statements is not None else None
        lengths.append(len(processor.encode_for_training(turns, tags, notes)[0]))
    return lengths
