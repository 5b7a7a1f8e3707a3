"""Check ecgllm's measurements against real references.

    python benchmarks/validate_measurements.py [--axis-n 2000] [--workers 2]

1. Heart rate vs MIT-BIH reference beat annotations (records 100 and 208, 30 min each) in 10 s windows.
2. Frontal axis category vs the cardiologists' `heart_axis` of PTB-XL (ptbxl_database_partial.csv).
   PTB-XL uses the German axis types; in the English categories used by ecgllm
   (normal −30°..+90°, left < −30°, right > +90°) they map as
   MID (Indifferenztyp) and LAD (Linkstyp, −30°..+30°) → normal, ALAD (überdrehter Linkstyp) → left,
   RAD (Rechtstyp) and ARAD (überdrehter Rechtstyp) → right. AXL, AXR and SAG (rare, no documented
   angle range) are reported but not scored.
3. Label consistency on the same PTB-XL records: PR in 1st-degree AV block vs NORM, QRS in complete
   bundle branch blocks (≥ 120 ms by definition) vs NORM.

Writes benchmarks/results/measurements.json and benchmarks/results/axis_confusion.png.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED, environment, ptbxl_wfdb_dir, write_result  # noqa: E402

BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")
PTBXL_AXIS_TO_CATEGORY = {"MID": "normal", "LAD": "normal", "ALAD": "left", "RAD": "right", "ARAD": "right"}
CATEGORIES = ["normal", "left", "right", "extreme"]
_root: Path | None = None


def _init(root: str) -> None:
    global _root
    warnings.simplefilter("ignore")
    _root = Path(root)


def _measure_ptbxl(ecg_id: int) -> dict:
    from ecgllm import read_ecg
    from ecgllm.signal import measure

    m = measure(read_ecg(_root, record_id=ecg_id, prefer_fs=100))
    return {"ecg_id": ecg_id, "axis_deg": m.axis_deg, "axis_category": m.axis_category, "pr_ms": m.pr_ms,
            "qrs_ms": m.qrs_ms, "heart_rate": m.heart_rate}


def _mitbih_window(job: tuple[str, int]) -> dict | None:
    import wfdb

    from ecgllm import read_ecg
    from ecgllm.signal import measure

    warnings.simplefilter("ignore")
    record, start = job
    ann = wfdb.rdann(record, "atr", sampfrom=start * 360, sampto=(start + 10) * 360)
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol) if sym in BEAT_SYMBOLS])
    if beats.size < 3:
        return None
    reference = 60.0 / np.median(np.diff(beats) / 360.0)
    measured = measure(read_ecg(record + ".hea", start_s=start, duration_s=10)).heart_rate
    return {"record": Path(record).name, "start_s": start, "reference_bpm": reference, "measured_bpm": measured}


def heart_rate_vs_mitbih(workers: int) -> dict:
    jobs = [(str(SHARED / "external/mitdb" / r), s) for r in ("100", "208") for s in range(0, 1800, 10)]
    with mp.get_context("fork").Pool(workers) as pool:
        rows = [r for r in pool.map(_mitbih_window, jobs, chunksize=4) if r is not None]
    df = pd.DataFrame(rows)
    ok = df.measured_bpm.notna()
    err = (df.measured_bpm - df.reference_bpm).abs()[ok]
    per_record = {}
    for name, g in df[ok].groupby("record"):
        e = (g.measured_bpm - g.reference_bpm).abs()
        per_record[name] = {"windows": int(len(g)), "mae_bpm": round(float(e.mean()), 2),
                            "within_5_bpm": round(float((e <= 5).mean()), 3)}
    return {"windows": int(len(df)), "measured": int(ok.sum()), "mae_bpm": round(float(err.mean()), 2),
            "median_abs_error_bpm": round(float(err.median()), 2),
            "within_5_bpm": round(float((err <= 5).mean()), 3), "per_record": per_record}


def axis_and_labels_vs_ptbxl(n: int, workers: int, root: Path) -> tuple[dict, pd.DataFrame]:
    db = pd.read_csv(SHARED / "ptbxl/ptbxl_database_partial.csv", usecols=["ecg_id", "heart_axis"])
    db = db[db.heart_axis.notna()].sample(min(n, int(db.heart_axis.notna().sum())), random_state=0)
    with mp.get_context("fork").Pool(workers, initializer=_init, initargs=(str(root),)) as pool:
        rows = pool.map(_measure_ptbxl, db.ecg_id.tolist(), chunksize=8)
    df = db.merge(pd.DataFrame(rows), on="ecg_id")
    labels = pd.read_csv(SHARED / "ptbxl/ptbxl_labels.csv", usecols=["ecg_id", "NORM", "1AVB", "CLBBB", "CRBBB"])
    return {}, df.merge(labels, on="ecg_id")


def axis_report(df: pd.DataFrame) -> dict:
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    scored = df[df.heart_axis.isin(PTBXL_AXIS_TO_CATEGORY) & df.axis_category.notna()]
    reference = scored.heart_axis.map(PTBXL_AXIS_TO_CATEGORY)
    labels = ["normal", "left", "right"]
    predicted = scored.axis_category.where(scored.axis_category.isin(labels), "extreme")
    cm = confusion_matrix(reference, predicted, labels=CATEGORIES)
    raw_codes = pd.crosstab(df.heart_axis, df.axis_category.fillna("unmeasured"))
    median_deg = df.groupby("heart_axis")["axis_deg"].median().round(1)
    return {
        "records_measured": int(len(df)), "records_scored": int(len(scored)),
        "agreement": round(float((reference == predicted).mean()), 4),
        "cohen_kappa": round(float(cohen_kappa_score(reference, predicted)), 4),
        "recall_per_category": {c: round(float((predicted[reference == c] == c).mean()), 4) for c in labels},
        "confusion_matrix": {"rows_reference": CATEGORIES, "cols_measured": CATEGORIES, "counts": cm.tolist()},
        "ptbxl_code_vs_measured_category": raw_codes.to_dict(orient="index"),
        "median_measured_deg_per_ptbxl_code": median_deg.to_dict(),
    }, cm


def label_consistency(df: pd.DataFrame) -> dict:
    norm = df[(df.NORM == 1) & (df["1AVB"] == 0) & (df.CLBBB == 0) & (df.CRBBB == 0)]
    avb = df[df["1AVB"] == 1]
    bbb = df[(df.CLBBB == 1) | (df.CRBBB == 1)]

    def summary(values: pd.Series, threshold: float) -> dict:
        v = values.dropna()
        return {"n": int(len(v)), "median_ms": round(float(v.median()), 1) if len(v) else None,
                f"share_above_{int(threshold)}_ms": round(float((v > threshold).mean()), 3) if len(v) else None}

    return {"pr_1avb": summary(avb.pr_ms, 200), "pr_norm": summary(norm.pr_ms, 200),
            "qrs_complete_bbb": summary(bbb.qrs_ms, 120), "qrs_norm": summary(norm.qrs_ms, 120)}


def plot_confusion(cm: np.ndarray, path: Path, agreement: float, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay(cm, display_labels=CATEGORIES).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_xlabel("ecgllm measured category")
    ax.set_ylabel("PTB-XL cardiologist (mapped)")
    ax.set_title(f"Frontal QRS axis, {n} PTB-XL records\nagreement {agreement:.1%}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", help="PTB-XL root with records100/ (default: unpack the shared pack once)")
    parser.add_argument("--axis-n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    root = ptbxl_wfdb_dir(args.ptbxl)
    hr = heart_rate_vs_mitbih(args.workers)
    _, df = axis_and_labels_vs_ptbxl(args.axis_n, args.workers, root)
    axis, cm = axis_report(df)
    plot_confusion(cm, RESULTS / "axis_confusion.png", axis["agreement"], axis["records_scored"])
    write_result("measurements.json", {
        "heart_rate_vs_mitbih": hr, "axis_vs_ptbxl": axis, "label_consistency_ptbxl": label_consistency(df),
        "command": "python benchmarks/validate_measurements.py", **environment(),
    })


if __name__ == "__main__":
    main()
