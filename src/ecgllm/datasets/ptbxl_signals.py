"""PTB-XL signals by ecg_id from whatever copy a user has: the official folder (``records100/`` or
``records500/``), a prepared cache (``ecgllm data prepare``), or the lossless pack folder
(``*.ecgpack`` + ``ptbxl_pack.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import numpy as np

from ecgllm.datasets.ptbxl import DatasetError
from ecgllm.io.leads import STANDARD_12
from ecgllm.io.record import ECG


class PTBXLSignals:
    """``get(ecg_id) -> ECG`` over one of the three layouts; ``prefetch(ids)`` loads many at once."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root, self.kind = root, kind
        self._loaded: dict[int, ECG] = {}
        self._cache = None
        self._pack = None
        if kind == "cache":
            from ecgllm.datasets.cache import ECGCache

            self._cache = ECGCache.open(root)
        elif kind == "pack":
            spec = importlib.util.spec_from_file_location("ptbxl_pack", root / "ptbxl_pack.py")
            self._pack = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self._pack)

    @classmethod
    def open(cls, path: str | Path) -> "PTBXLSignals":
        root = Path(path)
        if (root / "meta.json").exists() and (root / "index.csv").exists():
            return cls(root, "cache")
        if (root / "records100").is_dir() or (root / "records500").is_dir():
            return cls(root, "official")
        if (root / "ptbxl_pack.py").exists() and any(root.glob("*.ecgpack")):
            return cls(root, "pack")
        raise DatasetError(f"{root}: not a PTB-XL folder (records100/ or records500/), an `ecgllm data prepare` "
                           f"cache, or a PTB-XL pack folder (*.ecgpack + ptbxl_pack.py).")

    def prefetch(self, ecg_ids: Iterable[int]) -> None:
        want = sorted({int(i) for i in ecg_ids} - set(self._loaded))
        if not want:
            return
        if self.kind == "cache":
            known = set(self._cache.index["ecg_id"].tolist())
            absent = [i for i in want if i not in known]
            if absent:
                raise DatasetError(f"{self.root}: the cache lacks ecg_ids {absent[:10]}")
            for i, ecg in zip(want, self._cache.ecgs(want)):  # with the leads the cache masked, as training has them
                ecg.meta.update({"id": i, "source": "ptbxl"})
                self._loaded[i] = ecg
        elif self.kind == "pack":
            try:
                ids, signals, _ = self._pack.load_records(str(self.root), want)
            except KeyError as exc:
                raise DatasetError(f"{self.root}: {exc.args[0]}") from None
            mv = self._pack.to_millivolts(signals)
            for i, s in zip(ids, mv):
                self._loaded[int(i)] = ECG(np.ascontiguousarray(s.T), 100.0, list(STANDARD_12),
                                           {"id": int(i), "source": "ptbxl"})
        else:
            from ecgllm.io.formats.wfdb_format import ptbxl_record_path
            from ecgllm.io.reader import read_ecg

            for i in want:
                self._loaded[i] = read_ecg(ptbxl_record_path(self.root, i, prefer_fs=100))

    def get(self, ecg_id: int) -> ECG:
        if int(ecg_id) not in self._loaded:
            self.prefetch([ecg_id])
        return self._loaded[int(ecg_id)]
