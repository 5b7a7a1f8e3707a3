"""A memory-mapped training cache: every record prepared once, then loaded in seconds.

Layout of a cache folder:
  signals.npy   float16 [N, leads, T] in mV (a .npy memory map; float16 keeps 0.05 % relative precision,
                far below ECG noise, at half the size of float32)
  masks.npy     bool [N, leads]: False where a lead was missing, flat or saturated in the recording (so a
                cached ECG is masked as the same file is when it is answered); caches from before it have none
  index.csv     row, ecg_id, patient_id, strat_fold (and whatever the dataset table offers)
  meta.json     fs, leads, samples, dtype, the PrepConfig used, source, ecgllm version

The folder is built under a temporary name and renamed at the end, so a crash never leaves a
half-written cache that looks complete.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ecgllm.io.record import ECG
from ecgllm.signal.prepare import PrepConfig

CHUNK = 256
_state: dict = {}


def _init_worker(out_path: str, config: dict) -> None:
    warnings.simplefilter("ignore")
    _state["out"] = np.lib.format.open_memmap(out_path, mode="r+")
    _state["masks"] = np.lib.format.open_memmap(str(Path(out_path).with_name("masks.npy")), mode="r+")
    _state["config"] = PrepConfig.from_dict(config)


def _fill(job: tuple[int, list[str]]) -> tuple[int, list[tuple[int, str]]]:
    """Read and prepare one chunk of records into the shared output; return (count, [(row, error)])."""
    from ecgllm.io import ECGReadError, read_ecg
    from ecgllm.signal import prepare_batch

    start, paths = job
    ecgs, failures, rows = [], [], []
    for i, p in enumerate(paths):
        try:
            ecgs.append(read_ecg(p))
            rows.append(start + i)
        except ECGReadError as exc:
            failures.append((start + i, str(exc)))
    if ecgs:
        signals, masks = prepare_batch(ecgs, _state["config"])
        _state["out"][rows] = signals.astype(np.float16)
        _state["masks"][rows] = masks
    return len(paths), failures


def build_cache(paths: list[Path], index: pd.DataFrame, out: str | Path, config: PrepConfig,
                source: str, workers: int = 2, progress: bool = True) -> Path:
    """Prepare ``paths`` (one per row of ``index``) into a cache folder at ``out``."""
    from tqdm import tqdm

    from ecgllm import __version__

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    if config.n_samples is None:
        raise ValueError("a cache needs a fixed window (PrepConfig.window_s)")
    tmp = out.with_name(out.name + f".partial-{int(time.time())}")
    tmp.mkdir(parents=True)
    try:
        signals_path = tmp / "signals.npy"
        shape = (len(paths), len(config.leads), config.n_samples)
        np.lib.format.open_memmap(signals_path, mode="w+", dtype=np.float16, shape=shape).flush()
        np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=bool, shape=shape[:2]).flush()
        jobs = [(i, [str(p) for p in paths[i:i + CHUNK]]) for i in range(0, len(paths), CHUNK)]
        failures: list[tuple[int, str]] = []
        bar = tqdm(total=len(paths), unit="rec", desc="preparing", disable=not progress)
        args = (str(signals_path), config.to_dict())
        if workers <= 1:
            _init_worker(*args)
            results = map(_fill, jobs)
        else:
            pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=args)
            results = pool.imap_unordered(_fill, jobs)
        for count, errs in results:
            bar.update(count)
            failures.extend(errs)
        bar.close()
        if workers > 1:
            pool.close()
            pool.join()
        index = index.reset_index(drop=True).copy()
        index.insert(0, "row", np.arange(len(index)))
        index["ok"] = True
        failed = [row for row, _ in failures]
        index.loc[failed, "ok"] = False  # their rows stay zero in signals.npy
        if failed:  # and unmasked, as before masks were kept: a wholly masked ECG would leave an encoder nothing
            masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="r+")
            masks[failed] = True
            masks.flush()
        index.to_csv(tmp / "index.csv", index=False)
        meta = {"fs": config.fs, "leads": list(config.leads), "samples": config.n_samples, "dtype": "float16",
                "units": "mV", "n_records": len(paths), "n_failed": len(failures), "prep": config.to_dict(),
                "source": source, "ecgllm_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "failures": [message for _, message in failures[:100]]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class ECGCache:
    """A prepared cache opened as a memory map: ``batch(ids)`` and ``load_all()`` return float32 mV."""

    path: Path
    signals: np.ndarray
    index: pd.DataFrame
    meta: dict
    masks: np.ndarray | None = None  # bool [N, leads]; None for a cache built before masks were kept

    @classmethod
    def open(cls, path: str | Path) -> "ECGCache":
        path = Path(path)
        if not (path / "meta.json").exists():
            raise FileNotFoundError(f"{path}: not an ecgllm cache (meta.json missing); build one with "
                                    "`ecgllm data prepare`.")
        meta = json.loads((path / "meta.json").read_text())
        index = pd.read_csv(path / "index.csv")
        signals = np.load(path / "signals.npy", mmap_mode="r")
        masks = np.load(path / "masks.npy") if (path / "masks.npy").exists() else None
        return cls(path=path, signals=signals, index=index, meta=meta, masks=masks)

    def __post_init__(self) -> None:
        # Built once: batch() runs for every training item.
        self._row_of = dict(zip(self.index["ecg_id"].tolist(), self.index["row"].tolist()))

    def __len__(self) -> int:
        return int(self.signals.shape[0])

    def rows(self, ecg_ids) -> np.ndarray:
        missing = [i for i in ecg_ids if int(i) not in self._row_of]
        if missing:
            raise KeyError(f"ecg ids not in the cache: {missing[:10]}")
        return np.asarray([self._row_of[int(i)] for i in ecg_ids], dtype=np.int64)

    def batch(self, ecg_ids) -> np.ndarray:
        """Signals of the given ids, float32 ``[B, leads, T]``, in the order asked."""
        rows = self.rows(ecg_ids)
        order = np.argsort(rows)  # sorted reads are kinder to the page cache
        out = np.empty((len(rows),) + self.signals.shape[1:], dtype=np.float32)
        out[order] = self.signals[rows[order]]
        return out

    def ecgs(self, ecg_ids) -> list[ECG]:
        """The given records as `ECG` objects (cache rate and leads, mV), in the order asked; a lead the cache
        masked is a bad lead of its ECG, so preparing it again masks it as answering the recording would."""
        fs, leads = self.meta["fs"], list(self.meta["leads"])
        masks = self.masks[self.rows(ecg_ids)] if self.masks is not None else [None] * len(ecg_ids)
        return [ECG(signal, fs, leads, {} if mask is None or mask.all() else
                    {"bad_leads": {lead: "masked when the cache was built" for lead, ok in zip(leads, mask) if not ok}})
                for signal, mask in zip(self.batch(ecg_ids), masks)]

    def load_all(self) -> np.ndarray:
        return np.asarray(self.signals, dtype=np.float32)
