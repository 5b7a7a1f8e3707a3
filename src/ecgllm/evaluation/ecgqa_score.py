"""ECG-QA scoring: exact match of answer sets, as the official definition (Oh et al., 2023) has it — a
prediction is right when the set of answers it gives equals the gold answer set, order ignored.

Predictions are JSONL lines ``{"sample_id": ..., "answer": "..." or [...], "variant": optional}`` that any
model can write. The gold is any official-format file or folder (``template/`` and/or ``paraphrased/``,
``.json`` or ``.json.gz``). Missing, unparseable and unknown predictions are counted and reported; missing
and unparseable ones count as wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ecgllm.datasets.ecgqa import VARIANTS, ECGQAFormatError, QASample, read_qa_file
from ecgllm.evaluation.answers import key, parse_answer
from ecgllm.evaluation.stats import bootstrap_ci


@dataclass
class GoldSet:
    """Official samples keyed by (variant, sample_id); variant is None when the path does not say."""

    samples: dict[tuple[str | None, int], QASample]
    files: list[Path]
    version: str                                   # sha256 over the files' bytes: which data was scored
    variants: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


def _variant_of(path: Path) -> str | None:
    parts = [p for p in path.parts if p in VARIANTS]
    return parts[-1] if parts else None


def _qa_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.name.endswith((".json", ".json.gz")))
        if files:
            return files
        raise ECGQAFormatError(f"{path}: holds no .json or .json.gz ECG-QA files.")
    raise ECGQAFormatError(f"{path}: does not exist.")


def load_gold(paths: str | Path | Sequence[str | Path]) -> GoldSet:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = [f for p in paths for f in _qa_files(Path(p))]
    digest = hashlib.sha256()
    samples: dict[tuple[str | None, int], QASample] = {}
    for f in files:
        digest.update(f.read_bytes())
        variant = _variant_of(f)
        for s in read_qa_file(f, variant=variant):
            samples[(variant, s.sample_id)] = s
    variants = sorted({v for v, _ in samples}, key=lambda v: (v is None, v or ""))
    return GoldSet(samples, files, digest.hexdigest()[:16], variants)


def first_samples(gold: GoldSet, limit: int | None) -> list[QASample]:
    """The samples of the first ``limit`` sample ids (every variant of each), in a stable order: a limited
    run still compares template and paraphrased questions on the same samples."""
    ids = sorted({sid for _, sid in gold.samples})
    keep = set(ids[:limit]) if limit else set(ids)
    return sorted((s for (_, sid), s in gold.samples.items() if sid in keep), key=lambda s: (s.variant or "", s.sample_id))


def read_predictions(path: str | Path) -> list[dict]:
    """Prediction lines; a line that is not JSON or lacks ``sample_id``/``answer`` is an error naming it."""
    rows = []
    try:
        handle = Path(path).open(encoding="utf-8")
    except FileNotFoundError:
        raise ECGQAFormatError(f"{path}: predictions file does not exist.") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ECGQAFormatError(f"{path}:{number}: not a JSON line ({exc.msg}).") from None
            if not isinstance(row, dict) or "sample_id" not in row or "answer" not in row:
                raise ECGQAFormatError(f'{path}:{number}: expected {{"sample_id": ..., "answer": ...}}.')
            try:
                row["sample_id"] = int(row["sample_id"])
            except (TypeError, ValueError):
                raise ECGQAFormatError(f"{path}:{number}: sample_id must be an integer.") from None
            rows.append(row)
    return rows


def _options(template_id: int) -> tuple[str, ...]:
    from ecgllm.datasets.ecgqa_templates import load_templates

    templates = load_templates()
    if template_id in templates:
        return templates[template_id].answer_classes
    return tuple(sorted({c for t in templates.values() for c in t.answer_classes}))


def score_predictions(gold: GoldSet, predictions: Iterable[Mapping]) -> tuple[pd.DataFrame, dict]:
    """One row per gold sample (correct, parsed, missing, ...) and counts of predictions that matched none."""
    by_key: dict[tuple[str | None, int], object] = {}
    unknown = duplicates = 0
    single_variant = len(gold.variants) == 1
    for row in predictions:
        variant = row.get("variant")
        if single_variant and variant in (None, gold.variants[0]):
            variant = gold.variants[0]
        elif variant is None and not single_variant:
            raise ECGQAFormatError(f"the gold holds the variants {gold.variants}: every prediction needs "
                                   f'"variant" (sample ids repeat across variants)')
        k = (variant, row["sample_id"])
        if k not in gold.samples:
            unknown += 1
            continue
        duplicates += k in by_key
        by_key[k] = row["answer"]
    records = []
    for (variant, sid), s in gold.samples.items():
        options = _options(s.template_id)
        gold_set = frozenset(key(a) for a in s.answer)
        missing = (variant, sid) not in by_key
        parsed = None if missing else parse_answer(by_key[(variant, sid)], options)
        ok = parsed is not None and parsed.answers is not None and frozenset(key(a) for a in parsed.answers) == gold_set
        pred = "" if parsed is None or parsed.answers is None else "; ".join(sorted(parsed.answers))
        records.append((sid, variant or "", s.question_type, s.attribute_type, s.template_id, s.ecg_id[0],
                        s.ecg_id[-1], bool(ok), missing, not missing and parsed.answers is None,
                        "; ".join(sorted(s.answer)), pred))
    table = pd.DataFrame(records, columns=["sample_id", "variant", "question_type", "attribute_type", "template_id",
                                           "ecg_id", "ecg_id_last", "correct", "missing", "unparseable", "gold",
                                           "prediction"])
    return table, {"unknown_predictions": unknown, "duplicate_predictions": duplicates}


def _group(table: pd.DataFrame, column: str, n_boot: int, seed: int) -> tuple[dict, dict, dict]:
    em, n, ci = {}, {}, {}
    for name, part in table.groupby(column, sort=True):
        values = part["correct"].to_numpy(dtype=np.float64)
        em[str(name)] = round(float(values.mean()), 4)
        n[str(name)] = int(len(values))
        ci[str(name)] = [round(v, 4) for v in bootstrap_ci(values, n_boot, seed)]
    return em, n, ci


def summarize(table: pd.DataFrame, extra: Mapping | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Headline numbers: overall EM with a bootstrap 95% CI, EM per question type, attribute type, template,
    variant (and the paraphrase gap), stratum when the table has one; counts of what went wrong."""
    values = table["correct"].to_numpy(dtype=np.float64)
    out: dict = {"overall_em": round(float(values.mean()), 4) if len(values) else float("nan"),
                 "overall_em_ci95": [round(v, 4) for v in bootstrap_ci(values, n_boot, seed)], "n": int(len(values))}
    for column, name in (("question_type", "per_question_type"), ("attribute_type", "per_attribute_type"),
                         ("template_id", "per_template"), ("variant", "per_variant"), ("stratum", "per_stratum")):
        if column not in table or (column == "variant" and table["variant"].nunique() < 2):
            continue
        em, n, ci = _group(table, column, n_boot, seed)
        out[name], out[f"{name}_n"], out[f"{name}_ci95"] = em, n, ci
    if "per_variant" in out and {"template", "paraphrased"} <= set(out["per_variant"]):
        out["paraphrase_gap"] = round(out["per_variant"]["template"] - out["per_variant"]["paraphrased"], 4)
        out["per_variant_question_type"] = {
            v: _group(table[table["variant"] == v], "question_type", n_boot, seed)[0] for v in ("template", "paraphrased")}
    out["missing"] = int(table["missing"].sum())
    out["unparseable"] = int(table["unparseable"].sum())
    out.update(extra or {})
    return out


def score_file(predictions: str | Path, gold: str | Path | Sequence[str | Path], n_boot: int = 1000,
               seed: int = 0) -> tuple[dict, pd.DataFrame]:
    gold_set = load_gold(gold)
    table, extra = score_predictions(gold_set, read_predictions(predictions))
    metrics = summarize(table, extra, n_boot, seed)
    metrics["gold_version"] = gold_set.version
    metrics["gold_files"] = [str(f) for f in gold_set.files]
    return metrics, table
