"""Run folders: ``metrics.json`` (machine), ``report.md`` (human), plots, and what produced them (model id,
data version, seed, command line)."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ecgllm import __version__


def run_info(model: str, data_version: str, seed: int, extra: Mapping | None = None) -> dict:
    return {"model": model, "data_version": data_version, "seed": seed,
            "command": " ".join(["ecgllm", *sys.argv[1:]]) if sys.argv and "ecgllm" in sys.argv[0] else " ".join(sys.argv),
            "ecgllm_version": __version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {})}


def _fmt(value, ci=None) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if ci and not any(isinstance(c, float) and math.isnan(c) for c in ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def plot_group_bars(metrics: Mapping, key: str, path: Path, title: str) -> Path | None:
    """Bars of EM per group with their bootstrap 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = metrics.get(key)
    if not values:
        return None
    names = list(values)
    em = np.array([values[n] for n in names])
    ci = np.array([metrics.get(f"{key}_ci95", {}).get(n, [values[n], values[n]]) for n in names])
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    err = np.clip(np.stack([em - ci[:, 0], ci[:, 1] - em]), 0, None)
    ax.bar(range(len(names)), em, yerr=err, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("exact match")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion(table: pd.DataFrame, path: Path, title: str, top: int = 12) -> Path | None:
    """Confusion matrix of gold vs predicted answers (most frequent gold answers; 'unparseable' kept)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    if table.empty:
        return None
    pred = table["prediction"].where(table["prediction"] != "", "(unparseable/missing)")
    labels = list(table["gold"].value_counts().index[:top])
    labels += [p for p in pred.value_counts().index if p not in labels][: max(0, top + 2 - len(labels))]
    keep = table["gold"].isin(labels)
    if not keep.any():
        return None
    matrix = confusion_matrix(table["gold"][keep], pred[keep].where(pred[keep].isin(labels), "(other)"),
                              labels=labels + ["(other)"])
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    ticks = [t[:28] for t in labels + ["(other)"]]
    ax.set_xticks(range(len(ticks)), ticks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reliability(y_true: np.ndarray, prob: np.ndarray, path: Path, title: str, bins: int = 10) -> Path | None:
    """Reliability diagram of yes-probabilities (scikit-learn's calibration_curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    if len(np.unique(y_true)) < 2:
        return None
    frac, mean = calibration_curve(y_true, prob, n_bins=bins, strategy="uniform")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(mean, frac, "o-", label="model")
    ax.set_xlabel("predicted P(yes)")
    ax.set_ylabel("observed fraction yes")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_run(out: str | Path, metrics: Mapping, info: Mapping, title: str, sections: Mapping[str, str] | None = None,
              table: pd.DataFrame | None = None) -> Path:
    """Write report.md (+ per-sample CSV and plots), then metrics.json into ``out``: metrics.json comes last and
    atomically, so its presence means the run folder is complete (a killed run is redone, not taken for done)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**metrics, "run": dict(info)}
    plots = []
    for key, label in (("per_question_type", "EM per question type"), ("per_attribute_type", "EM per attribute type"),
                       ("per_stratum", "EM per severity stratum"), ("per_probe", "EM per probe"),
                       ("per_baseline", "EM per baseline")):
        p = plot_group_bars(metrics, key, out / f"{key}.png", label)
        if p:
            plots.append(p)
    if table is not None:
        partial = out / "per_sample.csv.tmp"
        table.to_csv(partial, index=False)
        partial.replace(out / "per_sample.csv")
        verify = table[table["question_type"].str.endswith("verify")] if "question_type" in table else table
        p = plot_confusion(verify, out / "confusion_verify.png", "verify questions: gold vs predicted")
        if p:
            plots.append(p)
    lines = [f"# {title}", "", "| run | |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in info.items()]
    if "overall_em" in metrics:
        lines += ["", f"**Overall exact match: {_fmt(metrics['overall_em'], metrics.get('overall_em_ci95'))}** "
                      f"(n = {metrics.get('n')}, bootstrap 95% CI; missing {metrics.get('missing', 0)}, "
                      f"unparseable {metrics.get('unparseable', 0)} — both counted wrong)"]
    for key, label in (("per_question_type", "question type"), ("per_attribute_type", "attribute type"),
                       ("per_variant", "variant"), ("per_stratum", "severity stratum")):
        if key in metrics:
            lines += ["", f"## EM per {label}", "", f"| {label} | EM [95% CI] | n |", "|---|---|---|"]
            for name, value in metrics[key].items():
                lines.append(f"| {name} | {_fmt(value, metrics.get(f'{key}_ci95', {}).get(name))} | "
                             f"{metrics.get(f'{key}_n', {}).get(name, '')} |")
    if "paraphrase_gap" in metrics:
        lines += ["", f"Paraphrase gap (template − paraphrased): {metrics['paraphrase_gap']:+.3f}"]
    for heading, body in (sections or {}).items():
        lines += ["", f"## {heading}", "", body]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(out / "metrics.json")
    return out
