"""Conversations + ECG signals as a torch dataset; batches are made by the model's processor."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ecgllm.datasets.cache import ECGCache
from ecgllm.datasets.severity import SUPERCLASS_STRATA
from ecgllm.io.image import ECGImage
from ecgllm.io.record import ECG


STRATUM_INDEX = {name: i for i, name in enumerate(SUPERCLASS_STRATA)}


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
        ecgs = [_as_rendered(ECG(s, meta["fs"], list(meta["leads"]), {}), ref.get("render"))
                for s, ref in zip(signals, row["ecgs"])]
        turns = [{"role": t["role"], "content": t["content"]} for t in row["turns"]]
        meta = row.get("meta", {})
        strata = [STRATUM_INDEX.get(s, STRATUM_INDEX["no diagnostic label"]) for s in meta.get("strata", [])]
        return turns, ecgs, [e.get("tag", "") for e in row["ecgs"]], float(meta.get("ipw_weight", 1.0)), strata


def _as_rendered(ecg: ECG, render: dict | None) -> ECG | ECGImage:
    """The ECG itself, or the paper render its reference asks for (`ecgllm data as-images`)."""
    if not render:
        return ecg
    from ecgllm.render import render_ecg

    return render_ecg(ecg, render.get("layout", "3x4"), augment=bool(render.get("augment")),
                      seed=int(render.get("seed", 0))).as_ecg_image(render=render)


def make_collate(processor, debias: str = "none"):
    """Batches from the processor; ``ipw`` adds per-sample loss weights, ``stratified`` the ECGs' strata
    (both written into the data by `ecgllm data debias`)."""
    def collate(items):
        turns, ecgs, tags, weights, strata = zip(*items)
        batch = processor(list(turns), list(ecgs), tags=list(tags), train=True)
        if debias == "ipw":
            batch["sample_weight"] = torch.tensor(weights, dtype=torch.float32)
        elif debias == "stratified":
            flat = [s for per_sample, group in zip(strata, ecgs) for s in (per_sample or [0] * len(group))]
            if len(flat) != len(batch.get("ecg_is_image", batch["ecg"])):
                raise ValueError("stratified de-biasing needs meta.strata for every ECG (run `ecgllm data debias`)")
            batch["ecg_strata"] = torch.tensor(flat, dtype=torch.long)
        return batch
    return collate
