"""Conversations + ECG signals as a torch dataset; batches are made by the model's processor."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import Dataset

from ecgllm.datasets.cache import ECGCache
from ecgllm.io.record import ECG


class ConversationDataset(Dataset):
    """Each item: (turns, ECGs, tags) for one conversation whose ECGs come from a prepared cache."""

    def __init__(self, jsonl: str | Path, cache: ECGCache, max_samples: int | None = None) -> None:
        self.rows = []
        with Path(jsonl).open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    self.rows.append(json.loads(line))
                if max_samples and len(self.rows) >= max_samples:
                    break
        self.cache = cache
        known = set(cache.index["ecg_id"].tolist())
        missing = {int(e["record_id"]) for r in self.rows for e in r["ecgs"]} - known
        if missing:
            raise ValueError(f"{jsonl}: {len(missing)} referenced ECGs are not in the cache {cache.path} "
                             f"(e.g. {sorted(missing)[:5]})")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        ids = [int(e["record_id"]) for e in row["ecgs"]]
        signals = self.cache.batch(ids)
        meta = self.cache.meta
        ecgs = [ECG(s, meta["fs"], list(meta["leads"]), {}) for s in signals]
        turns = [{"role": t["role"], "content": t["content"]} for t in row["turns"]]
        return turns, ecgs, [e.get("tag", "") for e in row["ecgs"]]


def make_collate(processor):
    def collate(items):
        turns, ecgs, tags = zip(*items)
        return processor(list(turns), list(ecgs), tags=list(tags), train=True)
    return collate
