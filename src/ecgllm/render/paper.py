"""Paper ECGs: a 12-lead record drawn as an ECG machine prints it.

Clinical layouts (3x4 with a lead II rhythm strip, 6x2, 12x1) at 25 mm/s and 10 mm/mV on a millimetre grid
(1 mm small boxes, 5 mm large boxes), a 1 mV calibration pulse at the start of every row, lead labels, an
optional header (id, age, sex, rate, intervals) and a footer with the scales. Every trace's position is kept
in a `PaperGeometry`, so a pixel maps back to seconds and millivolts (the round-trip test uses it).

Drawing is numpy (grid) + Pillow (traces, text): about 20 ms a page at 1100×850, so renders can be made on
the fly for training.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ecgllm.io.leads import STANDARD_12
from ecgllm.io.record import ECG

MM_PER_INCH = 25.4
LAYOUTS: dict[str, tuple[list[list[str]], str | None]] = {
    # rows of columns, and the rhythm strip's lead (None: no strip)
    "3x4": ([["I", "aVR", "V1", "V4"], ["II", "aVL", "V2", "V5"], ["III", "aVF", "V3", "V6"]], "II"),
    "6x2": ([["I", "V1"], ["II", "V2"], ["III", "V3"], ["aVR", "V4"], ["aVL", "V5"], ["aVF", "V6"]], None),
    "12x1": ([[lead] for lead in STANDARD_12], None),
}


@dataclass(frozen=True)
class PaperStyle:
    """Colours of the paper, grid and trace (RGB); ``grid=False`` prints on plain paper."""

    paper: tuple[int, int, int] = (255, 255, 255)
    minor: tuple[int, int, int] = (250, 205, 205)
    major: tuple[int, int, int] = (235, 140, 140)
    trace: tuple[int, int, int] = (0, 0, 0)
    text: tuple[int, int, int] = (0, 0, 0)
    grid: bool = True


@dataclass(frozen=True)
class RenderOptions:
    layout: str = "3x4"
    dpi: float = 100.0
    width_in: float = 11.0          # US letter, landscape: 1100 × 850 pixels at 100 dpi
    height_in: float = 8.5
    seconds: float = 10.0
    mm_per_s: float = 25.0
    mm_per_mv: float = 10.0
    header: bool = True
    header_mm: float = 24.0         # height of the band above the grid that holds the header
    line_mm: float = 0.25           # trace thickness
    style: PaperStyle = field(default_factory=PaperStyle)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {sorted(LAYOUTS)}")
        if not 30 <= self.dpi <= 600:
            raise ValueError(f"dpi must lie in 30..600, got {self.dpi}")
        if self.seconds * self.mm_per_s + 14 > self.width_in * MM_PER_INCH:  # the strip, the pulse, margins
            raise ValueError(f"{self.seconds} s at {self.mm_per_s} mm/s do not fit on a {self.width_in} in wide page")


@dataclass(frozen=True)
class Panel:
    """One lead segment on the page: ``start_s``..``end_s`` of the record drawn from ``x0`` px, baseline ``y0`` px."""

    lead: str
    start_s: float
    end_s: float
    x0: float
    y0: float


@dataclass(frozen=True)
class PaperGeometry:
    width: int
    height: int
    px_per_mm: float
    mm_per_s: float
    mm_per_mv: float
    panels: tuple[Panel, ...]
    offsets_mv: dict[str, float]    # subtracted from each lead before drawing (its median: the paper's baseline)

    def x(self, panel: Panel, t: np.ndarray) -> np.ndarray:
        return panel.x0 + (np.asarray(t) - panel.start_s) * self.mm_per_s * self.px_per_mm

    def y(self, panel: Panel, mv: np.ndarray) -> np.ndarray:
        return panel.y0 - np.asarray(mv) * self.mm_per_mv * self.px_per_mm

    def mv(self, panel: Panel, y_px: np.ndarray) -> np.ndarray:
        """Pixel row → millivolts (plus the lead's median, to compare with the record itself)."""
        return (panel.y0 - np.asarray(y_px)) / (self.mm_per_mv * self.px_per_mm) + self.offsets_mv.get(panel.lead, 0.0)

    def seconds(self, panel: Panel, x_px: np.ndarray) -> np.ndarray:
        return panel.start_s + (np.asarray(x_px) - panel.x0) / (self.mm_per_s * self.px_per_mm)


def _font(size_px: float) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, int(round(size_px))))


def _draw_grid(canvas: np.ndarray, px_per_mm: float, box: tuple[float, float, float, float], style: PaperStyle) -> None:
    """Millimetre lines inside ``box`` (x0, y0, x1, y1 px), thicker and darker every 5 mm; in place."""
    x0, y0, x1, y1 = box
    major_width = max(1, int(round(px_per_mm * 0.2)))
    for axis, start, stop, lo, hi in ((1, x0, x1, y0, y1), (0, y0, y1, x0, x1)):
        n = int(np.floor((stop - start) / px_per_mm)) + 1
        positions = np.round(start + np.arange(n) * px_per_mm).astype(int)
        a, b = int(round(lo)), int(round(hi)) + 1
        limit = canvas.shape[1] if axis == 1 else canvas.shape[0]
        for major in (False, True):  # major lines last, so they cross over the minor ones
            chosen = positions[(np.arange(n) % 5 == 0) == major]
            lines = np.concatenate([chosen + k for k in range(major_width if major else 1)])
            lines = lines[(lines >= 0) & (lines < limit)]
            colour = style.major if major else style.minor
            if axis == 1:
                canvas[a:b, lines] = colour
            else:
                canvas[lines, a:b] = colour


def _leads_in_mv(ecg: ECG, seconds: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    n = min(ecg.n_samples, int(round(seconds * ecg.fs)))
    traces, offsets = {}, {}
    for k, lead in enumerate(ecg.leads):
        y = ecg.signal[k, :n].astype(np.float64)
        if not np.isfinite(y).all():
            y = np.nan_to_num(y)
        offsets[lead] = float(np.median(y))
        traces[lead] = y - offsets[lead]
    return traces, offsets


def header_lines(ecg: ECG, measurements: dict | None = None) -> list[str]:
    """Two lines like a machine's header: who (id, age, sex) and what it measured (rate, intervals)."""
    meta = ecg.meta or {}
    who = [f"ID {meta.get('record_id') or meta.get('patient_id') or '-'}"]
    if meta.get("age") is not None:
        who.append(f"{meta['age']} y")
    if meta.get("sex"):
        who.append(str(meta["sex"]))
    who.append(f"{ecg.fs:g} Hz")
    m = measurements or {}

    def value(key: str, unit: str) -> str:
        v = m.get(key)
        return f"{v:.0f} {unit}" if isinstance(v, (int, float)) and np.isfinite(v) else "-"

    what = [f"Vent. rate {value('heart_rate', 'bpm')}", f"PR {value('pr_ms', 'ms')}",
            f"QRS {value('qrs_ms', 'ms')}", f"QT/QTc {value('qt_ms', 'ms')}/{value('qtc_bazett_ms', 'ms')}"]
    return ["   ".join(who), "   ".join(what)]


def render_paper(ecg: ECG, options: RenderOptions = RenderOptions(),
                 header: list[str] | None = None) -> tuple[Image.Image, PaperGeometry]:
    """Draw ``ecg`` on ECG paper. ``header``: the header's text lines (see `header_lines`); leads the record
    lacks are left blank and labelled "(missing)". Returns the RGB image and its geometry."""
    o, style = options, options.style
    ppm = o.dpi / MM_PER_INCH
    width, height = int(round(o.width_in * o.dpi)), int(round(o.height_in * o.dpi))
    rows, rhythm = LAYOUTS[o.layout]
    n_rows = len(rows) + (rhythm is not None)
    page_w_mm, page_h_mm = o.width_in * MM_PER_INCH, o.height_in * MM_PER_INCH
    strip_mm = o.seconds * o.mm_per_s
    pulse_mm = 7.0                                        # 1 mm lead-in, 5 mm (0.2 s) pulse, 1 mm gap
    left_mm = (page_w_mm - strip_mm - pulse_mm) / 2
    top_mm = o.header_mm if o.header else 8.0
    bottom_mm = 10.0
    pitch_mm = (page_h_mm - top_mm - bottom_mm) / n_rows

    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = style.paper
    if style.grid:
        _draw_grid(canvas, ppm, (left_mm * ppm, (top_mm - 4) * ppm, (page_w_mm - left_mm) * ppm,
                                 (page_h_mm - bottom_mm + 2) * ppm), style)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    traces, offsets = _leads_in_mv(ecg, o.seconds)
    line_width = max(1, int(round(o.line_mm * ppm)))
    label_font = _font(3.2 * ppm)
    panels: list[Panel] = []
    layout = PaperGeometry(width, height, ppm, o.mm_per_s, o.mm_per_mv, (), offsets)
    x_signal = (left_mm + pulse_mm) * ppm
    row_specs = [(row, o.seconds / len(row)) for row in rows] + ([([rhythm], o.seconds)] if rhythm else [])
    for r, (row, span_s) in enumerate(row_specs):
        y0 = (top_mm + pitch_mm * (r + 0.6)) * ppm                # baseline a little below mid-row: QRS points up
        pulse = [(left_mm, 0), (left_mm + 1, 0), (left_mm + 1, 10), (left_mm + 6, 10), (left_mm + 6, 0),
                 (left_mm + pulse_mm, 0)]
        draw.line([(x * ppm, y0 - mv_mm * o.mm_per_mv / 10 * ppm) for x, mv_mm in pulse], fill=style.trace,
                  width=line_width)
        for c, lead in enumerate(row):
            start = c * span_s
            panel = Panel(lead, start, start + span_s, x_signal + start * o.mm_per_s * ppm, y0)
            panels.append(panel)
            if c:  # a short separator mark between leads, as machines print
                xs = panel.x0
                draw.line([(xs, y0 - 3 * ppm), (xs, y0 + 3 * ppm)], fill=style.trace, width=line_width)
            name = lead if lead in traces else f"{lead} (missing)"
            draw.text((panel.x0 + 1.5 * ppm, y0 - 0.42 * pitch_mm * ppm), name, fill=style.text, font=label_font)
            if lead not in traces:
                continue
            y = traces[lead]
            a, b = int(round(start * ecg.fs)), min(len(y), int(round((start + span_s) * ecg.fs)) + 1)
            if b - a < 2:
                continue
            t = np.arange(a, b) / ecg.fs
            xs, ys = layout.x(panel, t), layout.y(panel, y[a:b])
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=style.trace, width=line_width, joint="curve")
    small = _font(2.8 * ppm)
    if o.header:
        for i, text in enumerate(header if header is not None else header_lines(ecg)):
            draw.text((left_mm * ppm, (5 + 5 * i) * ppm), text, fill=style.text, font=small)
    footer = f"{o.mm_per_s:g} mm/s   {o.mm_per_mv:g} mm/mV   {ecg.fs:g} Hz   layout {o.layout}"
    draw.text((left_mm * ppm, (page_h_mm - bottom_mm + 3) * ppm), footer, fill=style.text, font=small)
    return image, replace(layout, panels=tuple(panels))

