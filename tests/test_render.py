"""Paper renders: layouts, scales, calibration, a pixel → mV round trip, seeded distortions, the CLI, images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ecgllm import read_ecg
from ecgllm.io import ECGImage, ECGReadError
from ecgllm.render import LAYOUTS, render_ecg
from ecgllm.render.paper import PaperStyle, RenderOptions, render_paper
from ecgllm.serving.cli import main
from tests.conftest import PTBXL_1


@pytest.fixture(scope="module")
def ecg():
    return read_ecg(PTBXL_1)


def _trace_mv(image: Image.Image, geometry, panel, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Digitise one panel of a clean render: per pixel column, the centre of the dark (trace) pixels."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    edge = int(np.ceil(geometry.px_per_mm))                     # clear of the separator marks between leads
    x0 = int(np.ceil(geometry.x(panel, panel.start_s))) + edge
    x1 = int(np.floor(geometry.x(panel, panel.end_s))) - edge
    half = int(1.5 * geometry.mm_per_mv * geometry.px_per_mm)  # ±1.5 mV around the baseline, below the label
    top = int(panel.y0) - half
    band = grey[top: int(panel.y0) + half, x0:x1] < 100   # trace pixels: black; the grid is light
    cols = np.flatnonzero(band.any(0))
    rows = np.array([np.flatnonzero(band[:, c]).mean() for c in cols]) + top
    t = geometry.seconds(panel, cols + x0)
    return t, geometry.mv(panel, rows)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_puts_the_leads_in_clinical_order_and_time(ecg, layout):
    image, geometry = render_paper(ecg, RenderOptions(layout=layout))
    assert image.size == (1100, 850)
    rows, rhythm = LAYOUTS[layout]
    drawn = [p.lead for p in geometry.panels]
    assert drawn == [lead for row in rows for lead in row] + ([rhythm] if rhythm else [])
    assert sorted(set(drawn)) == sorted(ecg.leads)  # all 12 leads, none twice except the rhythm strip
    columns = len(rows[0])
    for p in geometry.panels[: len(rows) * columns]:
        assert p.end_s - p.start_s == pytest.approx(10.0 / columns)
    # 25 mm/s: 10 s span 250 mm; at 100 dpi that is 984 px
    first, last = geometry.panels[0], geometry.panels[columns - 1]
    assert geometry.x(last, last.end_s) - geometry.x(first, 0.0) == pytest.approx(250 / 25.4 * 100, abs=0.5)


def test_pixels_map_back_to_millivolts_on_a_clean_render(ecg):
    """Round trip: trace pixels → (s, mV) through the geometry match the record within a pixel's worth."""
    image, geometry = render_paper(ecg, RenderOptions(layout="3x4", dpi=200))
    for panel in geometry.panels:
        t, mv = _trace_mv(image, geometry, panel, ecg.fs)
        truth = np.interp(t, np.arange(ecg.n_samples) / ecg.fs, ecg.lead(panel.lead))
        assert len(t) > 100
        # column centres of a steep QRS sit between samples: compare medians and correlation, not maxima
        assert np.median(np.abs(mv - truth)) < 0.03, panel.lead
        if np.std(truth) > 0.05:
            assert np.corrcoef(mv, truth)[0, 1] > 0.9, panel.lead


def test_grid_is_millimetric_and_the_calibration_pulse_is_one_millivolt(ecg):
    options = RenderOptions(layout="6x2", dpi=254, header=False)  # 10 px per mm
    image, geometry = render_paper(ecg, options)
    grey = np.asarray(image.convert("RGB"), dtype=np.int16)
    row = grey[int(geometry.panels[0].y0) + 25]                   # a row between traces
    reddish = np.flatnonzero((row[:, 0] - row[:, 1]) > 20)        # grid pixels are red-tinted
    gaps = np.diff(reddish)
    assert np.median(gaps[gaps > 1]) == pytest.approx(10, abs=1)  # 1 mm = 10 px
    dark = np.asarray(image.convert("L")) < 100
    panel = geometry.panels[0]
    x_pulse = int(panel.x0 - 3.5 * geometry.px_per_mm)            # middle of the pulse's plateau
    column = np.flatnonzero(dark[:, x_pulse - 1: x_pulse + 2].any(1))
    plateau = column[np.argmin(np.abs(column - (panel.y0 - 100)))]
    assert panel.y0 - plateau == pytest.approx(100, abs=3)        # 1 mV = 10 mm = 100 px
    plain, _ = render_paper(ecg, RenderOptions(style=PaperStyle(grid=False), header=False))
    colours = np.asarray(plain).reshape(-1, 3)
    assert not ((colours[:, 0].astype(int) - colours[:, 1]) > 20).any()  # no grid at all


def test_distortions_are_seeded_and_reported(ecg):
    a = render_ecg(ecg, augment=True, seed=11)
    b = render_ecg(ecg, augment=True, seed=11)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.augmentations == b.augmentations
    seen = set()
    for seed in range(40):
        seen |= set(render_ecg(ecg, augment=True, seed=seed).augmentations)
    assert {"rotation", "perspective", "blur", "noise", "jpeg", "creases", "shadow", "paper"} <= seen
    clean = render_ecg(ecg)
    assert clean.augmentations == {} and not np.array_equal(np.asarray(clean.image), np.asarray(a.image))


def test_render_cli_writes_the_image_and_refuses_images_as_input(ecg, tmp_path, capsys):
    out = tmp_path / "page.jpg"
    assert main(["render", str(PTBXL_1), "-o", str(out), "--layout", "6x2", "--augment", "--seed", "3"]) == 0
    assert "seed 3" in capsys.readouterr().out
    assert Image.open(out).size == (1100, 850)
    assert main(["render", str(out), "-o", str(tmp_path / "again.png")]) == 3
    assert "is an image of an ECG" in capsys.readouterr().err
    assert main(["render", str(PTBXL_1), "-o", str(tmp_path / "x.png"), "--dpi", "5"]) == 2


def test_read_ecg_returns_images_and_refuses_broken_or_huge_ones(tmp_path):
    from ecgllm.io import ReadLimits

    page = render_ecg(read_ecg(PTBXL_1)).image
    page.save(tmp_path / "page.png")
    rgba = page.convert("RGBA")
    rgba.save(tmp_path / "page_alpha.png")
    page.save(tmp_path / "page.jpg", quality=80)
    for name in ("page.png", "page_alpha.png", "page.jpg"):
        image = read_ecg(tmp_path / name)
        assert isinstance(image, ECGImage) and image.image.mode == "RGB" and image.size == (1100, 850)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 100)
    with pytest.raises(ECGReadError, match="image"):
        read_ecg(tmp_path / "broken.jpg")
    with pytest.raises(ECGReadError, match="pixels"):
        read_ecg(tmp_path / "page.png", limits=ReadLimits(max_image_pixels=1000))
