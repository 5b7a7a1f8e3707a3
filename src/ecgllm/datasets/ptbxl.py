"""PTB-XL: official splits, patients, SCP statements with likelihoods, and the paper's aggregations.

Two sources are accepted:
- the official distribution (``ptbxl_database.csv`` + ``scp_statements.csv`` [+ ``records100/``/``records500/``]);
- the label-only table ``ptbxl_labels.csv`` (binary flags for all records) with, optionally, a partial
  ``ptbxl_database_partial.csv`` holding official metadata for some records. Whatever is missing
  (likelihoods, reports, noise columns, heart axis ...) is listed in ``PTBXL.missing`` and is None/NaN
  per record, never invented.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ecgllm.errors import InputError

SPLIT_FOLDS = {"train": tuple(range(1, 9)), "valid": (9,), "test": (10,)}
SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
LABEL_KINDS = ("all", "diagnostic", "superclass", "subclass", "form", "rhythm")
METADATA_COLUMNS = ("report", "heart_axis", "infarction_stadium1", "infarction_stadium2", "baseline_drift",
                    "static_noise", "burst_noise", "electrodes_problems", "extra_beats", "pacemaker",
                    "validated_by_human", "recording_date", "device", "site", "nurse")
# the files a PTB-XL folder takes its labels from (the database or the label table, and the statements)
PTBXL_LABEL_FILES = ("ptbxl_database.csv", "ptbxl_labels.csv", "scp_statements.csv")


class DatasetError(InputError):
    """A dataset folder or table is missing or malformed; the message says what to provide."""


def _parse_scp(text: object) -> dict[str, float]:
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        value = ast.literal_eval(text)  # the official column is a Python dict literal
    except (ValueError, SyntaxError):
        return {}
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


@dataclass
class PTBXL:
    """PTB-XL metadata indexed by ``ecg_id``.

    Attributes:
        table: one row per record: ``patient_id``, ``age``, ``sex``, ``strat_fold``, ``scp_codes``
            (dict code -> likelihood; likelihood NaN when only presence is known), official metadata
            columns where available, and ``has_official_metadata`` (False: those columns are unknown,
            not empty).
        statements: the 71-row SCP statement table (index: code).
        root: folder with ``records100/``/``records500/`` when signals are available.
        missing: human-readable notes on what this copy of PTB-XL lacks.
    """

    table: pd.DataFrame
    statements: pd.DataFrame
    root: Path | None = None
    missing: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, records_root: str | Path | None = None) -> "PTBXL":
        """Load from a folder holding either ``ptbxl_database.csv`` or ``ptbxl_labels.csv``."""
        path = Path(path)
        if not path.is_dir():
            raise DatasetError(f"{path}: not a folder. Give the PTB-XL root (with ptbxl_database.csv or "
                               "ptbxl_labels.csv and scp_statements.csv).")
        statements_csv = path / "scp_statements.csv"
        if not statements_csv.exists():
            raise DatasetError(f"{path}: scp_statements.csv is missing; it ships with every PTB-XL release.")
        statements = pd.read_csv(statements_csv, index_col=0)
        root = Path(records_root) if records_root else path
        root = root if ((root / "records100").is_dir() or (root / "records500").is_dir()) else None
        if (path / "ptbxl_database.csv").exists():
            return cls._from_database(pd.read_csv(path / "ptbxl_database.csv"), statements, root)
        if (path / "ptbxl_labels.csv").exists():
            partial = path / "ptbxl_database_partial.csv"
            return cls._from_labels(pd.read_csv(path / "ptbxl_labels.csv"), statements,
                                    pd.read_csv(partial) if partial.exists() else None, root)
        raise DatasetError(f"{path}: neither ptbxl_database.csv (official) nor ptbxl_labels.csv found.")

    @classmethod
    def _from_database(cls, db: pd.DataFrame, statements: pd.DataFrame, root: Path | None) -> "PTBXL":
        db = db.copy()
        db["scp_codes"] = db["scp_codes"].map(_parse_scp)
        table = db.set_index("ecg_id").sort_index()
        table["has_official_metadata"] = True
        missing = [] if root else ["signals: no records100/ or records500/ folder next to the metadata"]
        return cls(table=table, statements=statements, root=root, missing=missing)

    @classmethod
    def _from_labels(cls, labels: pd.DataFrame, statements: pd.DataFrame, partial: pd.DataFrame | None,
                     root: Path | None) -> "PTBXL":
        codes = [c for c in statements.index if c in labels.columns]
        flags = labels[codes].to_numpy(dtype=bool)
        scp = [{codes[j]: float("nan") for j in np.flatnonzero(row)} for row in flags]
        table = labels[["ecg_id", "patient_id", "age", "sex", "strat_fold"]].copy()
        table["scp_codes"] = scp
        table = table.set_index("ecg_id").sort_index()
        missing = ["scp likelihoods: ptbxl_labels.csv holds presence flags only"]
        if partial is not None:
            partial = partial.set_index("ecg_id")
            common = table.index.intersection(partial.index)
            likelihoods = partial.loc[common, "scp_codes"].map(_parse_scp)
            for ecg_id, official in likelihoods.items():
                current = table.at[ecg_id, "scp_codes"]
                # Presence comes from the labels table (v1.0.3); likelihoods from the official row.
                table.at[ecg_id, "scp_codes"] = {c: official.get(c, float("nan")) for c in current}
            for column in METADATA_COLUMNS:
                if column in partial.columns:
                    table[column] = partial[column].reindex(table.index)
            table["has_official_metadata"] = table.index.isin(common)
            share = len(common) / len(table)
            missing[0] = (f"scp likelihoods and official metadata ({', '.join(METADATA_COLUMNS[:8])}, ...) "
                          f"only for {len(common)} of {len(table)} records ({share:.0%}), from "
                          "ptbxl_database_partial.csv")
        else:
            table["has_official_metadata"] = False
            missing.append("official metadata (report, heart_axis, noise, infarction stage, extra beats): "
                           "no ptbxl_database_partial.csv")
        if table["patient_id"].isna().any():
            missing.append(f"patient_id unknown for {int(table['patient_id'].isna().sum())} records")
        if root is None:
            missing.append("signals: no records100/ or records500/ folder (unpack them, see the data README)")
        return cls(table=table, statements=statements, root=root, missing=missing)

    # ----------------------------------------------------------------------------------- queries
    @property
    def ecg_ids(self) -> np.ndarray:
        return self.table.index.to_numpy()

    def split_ids(self, split: str) -> np.ndarray:
        """Ids of the official split: train = folds 1–8, valid = 9, test = 10."""
        if split not in SPLIT_FOLDS:
            raise ValueError(f"split must be one of {list(SPLIT_FOLDS)}, got {split!r}")
        return self.table.index[self.table["strat_fold"].isin(SPLIT_FOLDS[split])].to_numpy()

    def classes(self, kind: str = "all") -> list[str]:
        """Label space of an aggregation level, in the order of scp_statements.csv."""
        s = self.statements
        if kind == "all":
            return list(s.index)
        if kind == "diagnostic":
            return list(s.index[s.diagnostic == 1])
        if kind == "superclass":
            return list(SUPERCLASSES)
        if kind == "subclass":
            return sorted(s.loc[s.diagnostic == 1, "diagnostic_subclass"].dropna().unique())
        if kind == "form":
            return list(s.index[s.form == 1])
        if kind == "rhythm":
            return list(s.index[s.rhythm == 1])
        raise ValueError(f"kind must be one of {LABEL_KINDS}, got {kind!r}")

    def labels(self, ecg_id: int, kind: str = "all", min_likelihood: float = 0.0) -> list[str]:
        """Statements of one record at an aggregation level; unknown likelihoods count as present."""
        codes = [c for c, p in self.table.at[ecg_id, "scp_codes"].items()
                 if c in self.statements.index and (np.isnan(p) or p >= min_likelihood)]
        s = self.statements
        if kind == "all":
            return codes
        if kind in ("diagnostic", "form", "rhythm"):
            return [c for c in codes if s.at[c, kind] == 1]
        column = {"superclass": "diagnostic_class", "subclass": "diagnostic_subclass"}.get(kind)
        if column is None:
            raise ValueError(f"kind must be one of {LABEL_KINDS}, got {kind!r}")
        return sorted({s.at[c, column] for c in codes if s.at[c, "diagnostic"] == 1 and
                       isinstance(s.at[c, column], str)})

    def label_matrix(self, kind: str = "all", ids: np.ndarray | None = None,
                     min_likelihood: float = 0.0) -> tuple[np.ndarray, list[str], np.ndarray]:
        """``(ids, classes, Y)`` with ``Y[i, j] = 1`` when record ``ids[i]`` has class ``j``."""
        ids = self.ecg_ids if ids is None else np.asarray(ids)
        classes = self.classes(kind)
        column = {c: j for j, c in enumerate(classes)}
        y = np.zeros((len(ids), len(classes)), dtype=np.uint8)
        for i, ecg_id in enumerate(ids):
            for c in self.labels(int(ecg_id), kind, min_likelihood):
                y[i, column[c]] = 1
        return ids, classes, y

    def record_path(self, ecg_id: int, prefer_fs: int = 500) -> Path:
        """WFDB path of a record (500 Hz first, falling back to 100 Hz as the shared copy requires)."""
        from ecgllm.io.formats.wfdb_format import ptbxl_record_path

        if self.root is None:
            raise DatasetError("this PTB-XL copy has no signals (no records100/ or records500/ folder).")
        return ptbxl_record_path(self.root, int(ecg_id), prefer_fs)

    def describe(self) -> str:
        folds = self.table["strat_fold"].value_counts().sort_index()
        lines = [f"PTB-XL: {len(self.table)} records, {self.table['patient_id'].nunique()} patients",
                 "folds: " + ", ".join(f"{int(k)}:{v}" for k, v in folds.items())]
        lines += [f"missing: {m}" for m in self.missing]
        return "\n".join(lines)
