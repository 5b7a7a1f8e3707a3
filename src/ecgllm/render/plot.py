"""A readable multi-lead ECG plot at clinical proportions (25 mm/s, 10 mm/mV) on a millimetre grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgllm.io.record import ECG

MM_PER_S = 25.0
MM_PER_MV = 10.0
MM_PER_INCH = 25.4
ROW_MV = 3.0  # vertical room per lead: ±1.5 mV


def _title(ecg: ECG, heart_rate: float | None) -> str:
    parts = [str(ecg.meta.get("record_id") or Path(str(ecg.meta.get("source") or "ECG")).name)]
    parts.append(f"{ecg.fs:g} Hz")
    if heart_rate is not None:
        parts.append(f"HR {heart_rate:.0f} bpm")
    parts.append("25 mm/s, 10 mm/mV")
    return "  ·  ".join(parts)


def plot_ecg(ecg: ECG, out: str | Path, *, seconds: float = 10.0, start_s: float = 0.0,
             heart_rate: float | None = None, dpi: int = 100) -> Path:
    """Draw every lead in its own row, true to paper proportions, and save a PNG (or PDF/SVG by suffix).

    Leads flagged as flat or saturated are drawn in grey with their problem in the label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MultipleLocator

    a = int(round(start_s * ecg.fs))
    b = min(ecg.n_samples, a + int(round(seconds * ecg.fs)))
    if a >= b:
        raise ValueError(f"start {start_s} s lies beyond the end of the recording ({ecg.duration_s:.1f} s)")
    t = np.arange(a, b) / ecg.fs
    span_s = t[-1] - t[0] if t.size > 1 else 1.0 / ecg.fs
    width_in = span_s * MM_PER_S / MM_PER_INCH + 1.6
    row_in = ROW_MV * MM_PER_MV / MM_PER_INCH
    fig, axes = plt.subplots(ecg.n_leads, 1, figsize=(width_in, row_in * ecg.n_leads + 1.0), squeeze=False)
    bad = ecg.bad_leads
    for k, lead in enumerate(ecg.leads):
        ax = axes[k, 0]
        y = ecg.signal[k, a:b]
        centre = float(np.median(y))
        ax.set_xlim(t[0], t[0] + span_s)
        ax.set_ylim(centre - ROW_MV / 2, centre + ROW_MV / 2)
        ax.set_aspect(MM_PER_MV / MM_PER_S, adjustable="box")  # 1 mV spans 10 mm, 1 s spans 25 mm
        lo, hi = centre - ROW_MV / 2, centre + ROW_MV / 2
        # The millimetre grid as two line collections: tick-based grids cost ~0.5 s per axis.
        for step, colour, width in ((0.04, "#f6d8d8", 0.3), (0.2, "#e8a0a0", 0.6)):
            xs = np.arange(np.ceil(t[0] / step) * step, t[0] + span_s + 1e-9, step)
            ys = np.arange(np.ceil(lo / (step * 2.5)) * step * 2.5, hi + 1e-9, step * 2.5)  # 0.1 / 0.5 mV
            segments = [[(x, lo), (x, hi)] for x in xs] + [[(t[0], y0), (t[0] + span_s, y0)] for y0 in ys]
            ax.add_collection(LineCollection(segments, colors=colour, linewidths=width, zorder=0))
        ax.xaxis.set_major_locator(MultipleLocator(1.0))
        ax.yaxis.set_major_locator(MultipleLocator(0.5))
        ax.plot(t, y, color="#888888" if lead in bad else "black", linewidth=0.7)
        label = lead + (f" ({bad[lead]})" if lead in bad else "")
        ax.text(0.003, 0.95, label, transform=ax.transAxes, va="top", fontsize=9, fontweight="bold",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
        ax.tick_params(labelsize=6, length=2)
        ax.set_ylabel("mV", fontsize=7)
        ax.tick_params(axis="x", labelbottom=k == ecg.n_leads - 1)
    axes[-1, 0].set_xlabel("time (s)", fontsize=8)
    fig.suptitle(_title(ecg, heart_rate), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
