"""ECG-QA evaluation runs: a model answers an official-format file (under a probe), the answers are scored by
the same scorer as external predictions, and one run folder gets metrics, report and plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ecgllm.models.default import load_checkpoint
from ecgllm.datasets.severity import most_severe, strata_for
from ecgllm.evaluation.ecgqa_score import first_samples, load_gold, read_predictions, score_predictions, summarize
from ecgllm.evaluation.report import run_info, write_run
from ecgllm.evaluation.runner import ModelAnswerer, run_samples


def add_strata(table: pd.DataFrame, ptbxl_labels: str | Path | None) -> pd.DataFrame:
    """Severity stratum per sample (the more severe of its ECGs) when PTB-XL labels are at hand."""
    if ptbxl_labels is None:
        return table
    from ecgllm.datasets.ptbxl import PTBXL

    ptbxl = PTBXL.load(ptbxl_labels)
    ids = set(table["ecg_id"]) | set(table["ecg_id_last"])
    strata = strata_for(ptbxl, ids)
    table = table.copy()
    table["stratum"] = [most_severe([strata.get(a, "no diagnostic label"), strata.get(b, "no diagnostic label")])
                        for a, b in zip(table["ecg_id"], table["ecg_id_last"])]
    return table


@dataclass
class EcgqaRun:
    data: Sequence[str]
    ptbxl: str
    out: str
    model: str | None = None
    probe: str = "none"
    labels: str | None = None        # folder with PTB-XL labels for the strata (default: --ptbxl if it has them)
    limit: int | None = None
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 32
    modality: str = "signal"         # or "image" / "image-augmented": each ECG is rendered on paper first
    device: str = "auto"             # where the model runs: a CUDA GPU when PyTorch sees one, else the CPU
    dtype: str = "auto"              # bf16 on a GPU that supports it, fp32 elsewhere


MODALITIES = ("signal", "image", "image-augmented")


def picture_of(ecg, augment: bool, seed: int, key: int | str):
    """One recording as an evaluation page (`ecgllm.render.pages.evaluation_page`: 3x4 layout + rhythm strip),
    distorted if asked: the same record is drawn the same way by every evaluation that asks about pictures."""
    from ecgllm.render.pages import evaluation_page

    name = f"ecg_id {key}" if isinstance(key, int) else str(key)
    return evaluation_page(seed, key, augment).draw(ecg).as_ecg_image(source=f"render of {name}")


def rendered_source(get_ecg, augment: bool, seed: int):
    """The same ECGs as pictures: each record rendered by `picture_of`."""
    def get(ecg_id: int):
        return picture_of(get_ecg(ecg_id), augment, seed, int(ecg_id))

    return get


def labels_dir_for(run: EcgqaRun) -> Path | None:
    for candidate in (run.labels, run.ptbxl):
        if candidate and any((Path(candidate) / f).exists() for f in ("ptbxl_database.csv", "ptbxl_labels.csv")):
            return Path(candidate)
    return None


def evaluate_ecgqa(run: EcgqaRun, model=None, processor=None, progress: bool = True) -> dict:
    """Answer, score and report; ``model``/``processor`` may be passed in (tests, or several probes in a row)."""
    from ecgllm.datasets.ptbxl_signals import PTBXLSignals

    gold = load_gold(run.data)
    samples = first_samples(gold, run.limit)
    model_name, model_dir = "given in memory", None
    if model is None:
        model, processor, model_dir = load_checkpoint(run.model, run.device, run.dtype)
        model_name = str(model_dir)
    source = PTBXLSignals.open(run.ptbxl)
    source.prefetch({i for s in samples for i in s.ecg_id})
    labels_dir = labels_dir_for(run)
    patients = None
    if labels_dir is not None:
        from ecgllm.datasets.ptbxl import PTBXL

        table = PTBXL.load(labels_dir).table
        if "patient_id" in table:
            patients = {int(i): p for i, p in table["patient_id"].dropna().items()}
    # before answering: a checkpoint trained under another split policy stops here
    from ecgllm.datasets.split_policy import seen_by_checkpoint

    evaluated = {i for s in samples for i in s.ecg_id}
    if model_dir is None and run.model and Path(run.model).is_dir():
        model_dir = Path(run.model)  # a loaded model passed in with the folder it came from
    seen = seen_by_checkpoint(model_dir, evaluated, patients=patients) if model_dir is not None else \
        {"split_policy": "not checked (model given in memory)"}
    out = Path(run.out)
    if run.modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {run.modality!r}")
    get_ecg = source.get if run.modality == "signal" else rendered_source(source.get, run.modality != "image", run.seed)
    predictions = run_samples(samples, ModelAnswerer(model, processor, run.batch_size, run.max_new_tokens),
                              get_ecg, out / "predictions.jsonl", run.probe, run.seed, patients,
                              run.batch_size, progress)
    wanted = {(s.variant, s.sample_id) for s in samples}
    gold.samples = {k: v for k, v in gold.samples.items() if k in wanted}
    table, extra = score_predictions(gold, read_predictions(predictions))
    table = add_strata(table, labels_dir)
    metrics = summarize(table, extra, seed=run.seed)
    metrics["probe"] = run.probe
    metrics["gold_version"] = gold.version
    metrics["modality"] = run.modality
    metrics["seen_in_training"] = seen
    info = run_info(model_name, gold.version, run.seed, {"probe": run.probe, "modality": run.modality,
                                                         "data": list(map(str, run.data)),
                                                         "samples": len(samples), "seen_in_training": seen})
    write_run(out, metrics, info, f"ECG-QA evaluation ({run.probe})", table=table)
    return metrics
